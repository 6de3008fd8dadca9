package service

import (
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/maas-platform/maas/control/internal/user"
)

// Changing a password, an admin password reset and disabling a user end every console
// session issued before; API keys are not sessions and keep working (unless disabled).
func TestSessionsEnd(t *testing.T) {
	tc := startControl(t, nil)
	admin := tc.adminToken()

	t.Run("own password change", func(t *testing.T) {
		u := tc.createUser(admin, "user")
		other := tc.login(u.Username, u.Password) // a second session of the same user
		_, key := tc.createKey(admin, map[string]any{"name": "console", "user_id": u.ID, "scopes": []string{"management"}})
		tc.call("POST", "/api/v1/users/me/password", u.Token, map[string]string{"current_password": u.Password, "new_password": "Changed-Pass-1"}, 204)
		for _, tok := range []string{u.Token, other} {
			e := tc.call("GET", "/api/v1/users/me", tok, nil, 401).apiErr(t)
			if e.Error.Type != "authentication_error" {
				t.Errorf("ended session: error type %q", e.Error.Type)
			}
		}
		tc.call("GET", "/api/v1/users/me", key, nil, 200)
		fresh := tc.login(u.Username, "Changed-Pass-1")
		tc.call("GET", "/api/v1/users/me", fresh, nil, 200)
	})

	t.Run("admin password reset", func(t *testing.T) {
		u := tc.createUser(admin, "developer")
		bystander := tc.createUser(admin, "user")
		tc.call("PATCH", fmt.Sprintf("/api/v1/users/%d", u.ID), admin, map[string]any{"password": "Reset-Pass-123"}, 200)
		tc.call("GET", "/api/v1/users/me", u.Token, nil, 401)
		tc.call("GET", "/api/v1/users/me", bystander.Token, nil, 200)
		tc.call("GET", "/api/v1/users/me", admin, nil, 200)
		fresh := tc.login(u.Username, "Reset-Pass-123")
		tc.call("GET", "/api/v1/users/me", fresh, nil, 200)
		// A PATCH without a password leaves sessions alone.
		tc.call("PATCH", fmt.Sprintf("/api/v1/users/%d", u.ID), admin, map[string]any{"full_name": "Dev"}, 200)
		tc.call("GET", "/api/v1/users/me", fresh, nil, 200)
	})

	t.Run("disable then enable", func(t *testing.T) {
		u := tc.createUser(admin, "user")
		path := fmt.Sprintf("/api/v1/users/%d", u.ID)
		tc.call("PATCH", path, admin, map[string]any{"is_active": false}, 200)
		tc.call("GET", "/api/v1/users/me", u.Token, nil, 401)
		tc.call("PATCH", path, admin, map[string]any{"is_active": true}, 200)
		tc.call("GET", "/api/v1/users/me", u.Token, nil, 401) // re-enabling does not revive it
		tc.call("GET", "/api/v1/users/me", tc.login(u.Username, u.Password), nil, 200)
	})

	t.Run("role removal takes effect at once", func(t *testing.T) {
		u := tc.createUser(admin, "admin")
		tc.call("GET", "/api/v1/users", u.Token, nil, 200)
		tc.call("PUT", fmt.Sprintf("/api/v1/users/%d/roles", u.ID), admin, map[string]any{"roles": []string{"user"}}, 200)
		tc.call("GET", "/api/v1/users", u.Token, nil, 403)
	})
}

func TestLoginRateLimit(t *testing.T) {
	tc := startControl(t, func(o *Options) {
		o.LoginLimit = user.LoginLimit{PerUser: 3, PerIP: 8, Window: time.Hour}
	})
	admin := tc.adminToken()
	u := tc.createUser(admin, "user")
	login := func(username, password string) response {
		t.Helper()
		return tc.do("POST", "/api/v1/auth/login", map[string]string{"username": username, "password": password}, nil)
	}
	wantLimited := func(r response) {
		t.Helper()
		if r.Status != 429 {
			t.Fatalf("status %d, want 429: %s", r.Status, r.Body)
		}
		e := r.apiErr(t)
		if e.Error.Code == nil || *e.Error.Code != "rate_limit_exceeded" || e.Error.Type != "rate_limit_error" {
			t.Errorf("429 error %+v", e.Error)
		}
		secs, err := strconv.Atoi(r.Header.Get("Retry-After"))
		if err != nil || secs < 1 || secs > 3600 {
			t.Errorf("Retry-After %q, want 1..3600 seconds", r.Header.Get("Retry-After"))
		}
	}

	// Two failures, then a success clears the username's count.
	for range 2 {
		if r := login(u.Username, "wrong-password"); r.Status != 401 {
			t.Fatalf("wrong password: %d", r.Status)
		}
	}
	tc.login(u.Username, u.Password)
	// Three failures lock the username, even for the right password.
	for range 3 {
		if r := login(u.Username, "wrong-password"); r.Status != 401 {
			t.Fatalf("wrong password: %d", r.Status)
		}
	}
	wantLimited(login(u.Username, u.Password))
	// Other users are not affected, and sessions already issued keep working.
	tc.login("admin", testAdminPassword)
	tc.call("GET", "/api/v1/users/me", u.Token, nil, 200)

	// Per client IP: failures over any usernames (unknown ones too) add up to 8: five
	// above, three more here. The refused attempt and successful logins do not count.
	for i := range 3 {
		if r := login(fmt.Sprintf("nobody%d", i), "wrong-password"); r.Status != 401 {
			t.Fatalf("unknown user %d: %d", i, r.Status)
		}
	}
	wantLimited(login("admin", testAdminPassword))
}
