package service

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/maas-platform/maas/pkg/apikey"
	"github.com/maas-platform/maas/pkg/internalauth"
)

func TestAPIKeyLifecycle(t *testing.T) {
	tc := startControl(t, nil)
	admin := tc.adminToken()
	u := tc.createUser(admin, "user")

	r := tc.call("POST", "/api/v1/api-keys", u.Token, map[string]any{"name": "ci", "models": []string{"sim-chat"}, "rpm": 10}, 201)
	var created struct {
		ID     int64    `json:"id"`
		Key    string   `json:"key"`
		Prefix string   `json:"prefix"`
		UserID int64    `json:"user_id"`
		Models []string `json:"models"`
		RPM    *int     `json:"rpm"`
	}
	r.decode(t, &created)
	if !apikey.Valid(created.Key) {
		t.Fatalf("created key %q is not a valid key", created.Key)
	}
	if created.Prefix != apikey.Visible(created.Key) || created.UserID != u.ID || created.RPM == nil || *created.RPM != 10 {
		t.Errorf("created key fields: %+v", created)
	}
	if diff := cmp.Diff([]string{"sim-chat"}, created.Models); diff != "" {
		t.Errorf("models (-want +got):\n%s", diff)
	}

	// Stored as SHA-256 (never the secret) with the visible prefix.
	var hash []byte
	var prefix string
	if err := tc.Pool.QueryRow(context.Background(), `SELECT key_hash, prefix FROM api_keys WHERE id = $1`, created.ID).Scan(&hash, &prefix); err != nil {
		t.Fatal(err)
	}
	sum := apikey.Sum([]byte(created.Key))
	if !bytes.Equal(hash, sum[:]) || prefix != created.Prefix {
		t.Errorf("stored hash/prefix do not match the key")
	}
	var leaked bool
	if err := tc.Pool.QueryRow(context.Background(), `SELECT EXISTS (SELECT 1 FROM api_keys WHERE position($1 in name || prefix) > 0)`, created.Key).Scan(&leaked); err != nil || leaked {
		t.Errorf("secret stored in clear (leaked=%v, err=%v)", leaked, err)
	}

	// The secret is never shown again: not in the list, not in GET.
	for _, path := range []string{"/api/v1/api-keys", fmt.Sprintf("/api/v1/api-keys/%d", created.ID)} {
		body := tc.call("GET", path, u.Token, nil, 200).Body
		if bytes.Contains(body, []byte(created.Key)) || bytes.Contains(body, []byte(`"key"`)) {
			t.Errorf("GET %s shows the secret: %s", path, body)
		}
	}

	// The key authenticates on control directly, but has only the inference scope (the
	// default): the console API refuses it with 403, not 401.
	if e := tc.call("GET", "/api/v1/users/me", created.Key, nil, 403).apiErr(t); e.Error.Code == nil || *e.Error.Code != "insufficient_scope" {
		t.Errorf("inference key on the console API: %+v", e.Error)
	}

	// Another user cannot see or revoke it; the admin can see it with user_id.
	other := tc.createUser(admin, "developer")
	tc.call("GET", fmt.Sprintf("/api/v1/api-keys/%d", created.ID), other.Token, nil, 404)
	tc.call("DELETE", fmt.Sprintf("/api/v1/api-keys/%d", created.ID), other.Token, nil, 404)
	tc.call("GET", fmt.Sprintf("/api/v1/api-keys?user_id=%d", u.ID), other.Token, nil, 403)
	var list struct {
		Data []struct {
			ID     int64 `json:"id"`
			UserID int64 `json:"user_id"`
		} `json:"data"`
	}
	tc.call("GET", fmt.Sprintf("/api/v1/api-keys?user_id=%d", u.ID), admin, nil, 200).decode(t, &list)
	if len(list.Data) != 1 || list.Data[0].ID != created.ID {
		t.Errorf("admin filter by user_id: %+v", list.Data)
	}
	tc.call("GET", "/api/v1/api-keys", other.Token, nil, 200).decode(t, &list)
	if len(list.Data) != 0 {
		t.Errorf("developer sees keys of others: %+v", list.Data)
	}

	// Revocation: 204, revoked_at set, the key stops working, revoking again is harmless.
	tc.call("DELETE", fmt.Sprintf("/api/v1/api-keys/%d", created.ID), u.Token, nil, 204)
	var revokedAt *time.Time
	if err := tc.Pool.QueryRow(context.Background(), `SELECT revoked_at FROM api_keys WHERE id = $1`, created.ID).Scan(&revokedAt); err != nil || revokedAt == nil {
		t.Fatalf("revoked_at = %v, %v", revokedAt, err)
	}
	e := tc.call("GET", "/api/v1/users/me", created.Key, nil, 401).apiErr(t)
	if !strings.Contains(e.Error.Message, "revoked") {
		t.Errorf("revoked key message %q", e.Error.Message)
	}
	tc.call("DELETE", fmt.Sprintf("/api/v1/api-keys/%d", created.ID), u.Token, nil, 204)
	var again *time.Time
	_ = tc.Pool.QueryRow(context.Background(), `SELECT revoked_at FROM api_keys WHERE id = $1`, created.ID).Scan(&again)
	if again == nil || !again.Equal(*revokedAt) {
		t.Errorf("second revoke changed revoked_at: %v → %v", revokedAt, again)
	}

	// Expired keys do not authenticate.
	id, key := tc.createKey(u.Token, map[string]any{"name": "short", "expires_at": time.Now().Add(time.Hour).Format(time.RFC3339)})
	if _, err := tc.Pool.Exec(context.Background(), `UPDATE api_keys SET expires_at = now() - interval '1 second' WHERE id = $1`, id); err != nil {
		t.Fatal(err)
	}
	tc.call("GET", "/api/v1/users/me", key, nil, 401)

	// Admin creates a key for another user; a non-admin cannot.
	var forU struct {
		UserID int64 `json:"user_id"`
	}
	tc.call("POST", "/api/v1/api-keys", admin, map[string]any{"name": "for u", "user_id": u.ID}, 201).decode(t, &forU)
	if forU.UserID != u.ID {
		t.Errorf("admin-created key belongs to %d, want %d", forU.UserID, u.ID)
	}
	tc.call("POST", "/api/v1/api-keys", other.Token, map[string]any{"name": "for u", "user_id": u.ID}, 403)
}

func TestDisabledUserAndForwardedIdentity(t *testing.T) {
	tc := startControl(t, nil)
	admin := tc.adminToken()
	u := tc.createUser(admin, "user")
	// A key with the management scope, which only an admin may grant.
	keyID, key := tc.createKey(admin, map[string]any{"name": "console", "user_id": u.ID, "scopes": []string{"management"}})

	signed := func(userID, keyID int64, token string, at time.Time) map[string]string {
		return internalauth.Sign(token, internalauth.Identity{UserID: userID, KeyID: keyID, Roles: []string{"admin"}}, at)
	}
	// A gateway-signed identity works, and roles come from the database, not the header.
	if r := tc.do("GET", "/api/v1/users/me", nil, signed(u.ID, keyID, testInternalToken, time.Now())); r.Status != 200 {
		t.Fatalf("signed identity: %d %s", r.Status, r.Body)
	}
	if r := tc.do("GET", "/api/v1/users", nil, signed(u.ID, keyID, testInternalToken, time.Now())); r.Status != 403 {
		t.Errorf("signed identity claiming admin reached an admin route: %d", r.Status)
	}
	for name, h := range map[string]map[string]string{
		"wrong token":         signed(u.ID, keyID, "another-internal-token-000", time.Now()),
		"stale":               signed(u.ID, keyID, testInternalToken, time.Now().Add(-5*time.Minute)),
		"key of another user": signed(1, keyID, testInternalToken, time.Now()),
	} {
		if r := tc.do("GET", "/api/v1/users/me", nil, h); r.Status != 401 {
			t.Errorf("%s: status %d, want 401", name, r.Status)
		}
	}

	// Disable: login, session token, API key and forwarded identity all stop working.
	tc.call("PATCH", fmt.Sprintf("/api/v1/users/%d", u.ID), admin, map[string]any{"is_active": false}, 200)
	if r := tc.do("POST", "/api/v1/auth/login", map[string]string{"username": u.Username, "password": u.Password}, nil); r.Status != 401 {
		t.Errorf("disabled user logged in: %d", r.Status)
	}
	tc.call("GET", "/api/v1/users/me", u.Token, nil, 401)
	tc.call("GET", "/api/v1/users/me", key, nil, 401)
	if r := tc.do("GET", "/api/v1/users/me", nil, signed(u.ID, keyID, testInternalToken, time.Now())); r.Status != 401 {
		t.Errorf("disabled user's forwarded identity: %d", r.Status)
	}
	// Enable again: the key works again; sessions issued before the disable stay ended.
	tc.call("PATCH", fmt.Sprintf("/api/v1/users/%d", u.ID), admin, map[string]any{"is_active": true}, 200)
	tc.call("GET", "/api/v1/users/me", key, nil, 200)
	tc.call("GET", "/api/v1/users/me", u.Token, nil, 401)
	u.Token = tc.login(u.Username, u.Password)

	// Wrong password and unknown user look the same.
	for _, body := range []map[string]string{{"username": u.Username, "password": "wrong-password"}, {"username": "nobody", "password": "wrong-password"}} {
		e := tc.call("POST", "/api/v1/auth/login", "", body, 401).apiErr(t)
		if e.Error.Message != "invalid username or password" {
			t.Errorf("login failure message %q", e.Error.Message)
		}
		if e.Error.Code == nil || *e.Error.Code != "invalid_credentials" {
			t.Errorf("login failure code %v, want invalid_credentials", e.Error.Code)
		}
	}

	// Password change: the old one stops working, the new one works.
	tc.call("POST", "/api/v1/users/me/password", u.Token, map[string]string{"current_password": "nope-nope-nope", "new_password": "Another-Pass-1"}, 400)
	tc.call("POST", "/api/v1/users/me/password", u.Token, map[string]string{"current_password": u.Password, "new_password": "Another-Pass-1"}, 204)
	tc.call("POST", "/api/v1/auth/login", "", map[string]string{"username": u.Username, "password": u.Password}, 401)
	tc.login(u.Username, "Another-Pass-1")
	var hash string
	if err := tc.Pool.QueryRow(context.Background(), `SELECT password_hash FROM users WHERE id = $1`, u.ID).Scan(&hash); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(hash, "$argon2id$") || strings.Contains(hash, "Another-Pass-1") {
		t.Errorf("stored password hash %q is not argon2id", hash)
	}

	// An admin cannot lock themselves out.
	var me struct {
		ID int64 `json:"id"`
	}
	tc.call("GET", "/api/v1/users/me", admin, nil, 200).decode(t, &me)
	tc.call("PATCH", fmt.Sprintf("/api/v1/users/%d", me.ID), admin, map[string]any{"is_active": false}, 400)
	tc.call("DELETE", fmt.Sprintf("/api/v1/users/%d", me.ID), admin, nil, 409)
	tc.call("PUT", fmt.Sprintf("/api/v1/users/%d/roles", me.ID), admin, map[string]any{"roles": []string{"user"}}, 400)
}

func TestValidationErrors(t *testing.T) {
	tc := startControl(t, nil)
	admin := tc.adminToken()
	u := tc.createUser(admin, "user")
	tc.call("POST", "/api/v1/models", admin, map[string]any{"name": "taken", "type": "chat", "aliases": []string{"taken-alias"}}, 201)
	tc.call("POST", "/internal/v1/backends/register", testInternalToken, registerBody("b1", 60000), 200)
	uq := fmt.Sprintf("/api/v1/users/%d/quota", u.ID)
	past := time.Now().Add(-time.Hour).Format(time.RFC3339)

	tests := []struct {
		name         string
		method, path string
		tok          string
		body         any
		status       int
		param        string // "" = expect null param
		code         string // checked when set
	}{
		{"short username", "POST", "/api/v1/users", admin, map[string]any{"username": "ab", "password": "Password-1"}, 400, "username", ""},
		{"short password", "POST", "/api/v1/users", admin, map[string]any{"username": "abc", "password": "short"}, 400, "password", ""},
		{"bad email", "POST", "/api/v1/users", admin, map[string]any{"username": "abc", "password": "Password-1", "email": "nope"}, 400, "email", ""},
		{"unknown role", "POST", "/api/v1/users", admin, map[string]any{"username": "abc", "password": "Password-1", "roles": []string{"root"}}, 400, "roles", ""},
		{"duplicate username", "POST", "/api/v1/users", admin, map[string]any{"username": u.Username, "password": "Password-1"}, 409, "username", ""},
		{"unknown field", "POST", "/api/v1/users", admin, map[string]any{"username": "abc", "password": "Password-1", "is_admin": true}, 400, "is_admin", ""},
		{"wrong type", "POST", "/api/v1/users", admin, `{"username": 5, "password": "Password-1"}`, 400, "username", ""},
		{"malformed JSON", "POST", "/api/v1/users", admin, `{"username": "abc",`, 400, "", ""},
		{"empty body", "POST", "/api/v1/api-keys", u.Token, "", 400, "", ""},
		{"key without name", "POST", "/api/v1/api-keys", u.Token, map[string]any{}, 400, "name", ""},
		{"key empty models", "POST", "/api/v1/api-keys", u.Token, map[string]any{"name": "k", "models": []string{}}, 400, "models", ""},
		{"key expired", "POST", "/api/v1/api-keys", u.Token, map[string]any{"name": "k", "expires_at": past}, 400, "expires_at", ""},
		{"key bad time", "POST", "/api/v1/api-keys", u.Token, map[string]any{"name": "k", "expires_at": "tomorrow"}, 400, "", ""},
		{"key negative rpm", "POST", "/api/v1/api-keys", u.Token, map[string]any{"name": "k", "rpm": -1}, 400, "rpm", ""},
		{"key rpm string", "POST", "/api/v1/api-keys", u.Token, `{"name":"k","rpm":"10"}`, 400, "rpm", ""},
		{"limit too big", "GET", "/api/v1/users?limit=101", admin, nil, 400, "limit", ""},
		{"limit zero", "GET", "/api/v1/api-keys?limit=0", u.Token, nil, 400, "limit", ""},
		{"bad cursor", "GET", "/api/v1/users?after=abc", admin, nil, 400, "after", ""},
		{"bad user_id filter", "GET", "/api/v1/api-keys?user_id=x", admin, nil, 400, "user_id", ""},
		{"model without type", "POST", "/api/v1/models", admin, map[string]any{"name": "m1"}, 400, "type", ""},
		{"model bad type", "POST", "/api/v1/models", admin, map[string]any{"name": "m1", "type": "image"}, 400, "type", ""},
		{"model bad name", "POST", "/api/v1/models", admin, map[string]any{"name": "-m1", "type": "chat"}, 400, "name", ""},
		{"model duplicate", "POST", "/api/v1/models", admin, map[string]any{"name": "taken", "type": "chat"}, 409, "name", ""},
		{"model name is an alias", "POST", "/api/v1/models", admin, map[string]any{"name": "taken-alias", "type": "chat"}, 409, "name", ""},
		{"alias is a model", "POST", "/api/v1/models", admin, map[string]any{"name": "m2", "type": "chat", "aliases": []string{"taken"}}, 409, "name", ""},
		{"model visibility", "POST", "/api/v1/models", admin, map[string]any{"name": "m1", "type": "chat", "visibility": "secret"}, 400, "visibility", ""},
		{"model routing", "POST", "/api/v1/models", admin, map[string]any{"name": "m1", "type": "chat", "routing_policy": "random"}, 400, "routing_policy", ""},
		{"model negative price", "POST", "/api/v1/models", admin, map[string]any{"name": "m1", "type": "chat", "input_price_per_million": -1}, 400, "input_price_per_million", ""},
		{"model zero context", "POST", "/api/v1/models", admin, map[string]any{"name": "m1", "type": "chat", "context_window": 0}, 400, "context_window", ""},
		{"model unknown role", "POST", "/api/v1/models", admin, map[string]any{"name": "m1", "type": "chat", "visibility": "restricted", "allowed_roles": []string{"root"}}, 400, "allowed_roles", ""},
		{"model unknown user", "POST", "/api/v1/models", admin, map[string]any{"name": "m1", "type": "chat", "allowed_users": []int64{999999}}, 400, "allowed_users", ""},
		{"model rename", "PATCH", "/api/v1/models/taken", admin, map[string]any{"name": "other"}, 400, "name", ""},
		{"model patch by alias", "PATCH", "/api/v1/models/taken-alias", admin, map[string]any{"description": "x"}, 404, "", "model_not_found"},
		{"model not found", "GET", "/api/v1/models/nope", u.Token, nil, 404, "", "model_not_found"},
		{"quota negative", "PUT", uq, admin, map[string]any{"requests_per_minute": -1}, 400, "requests_per_minute", ""},
		{"quota unknown user", "PUT", "/api/v1/users/999999/quota", admin, map[string]any{"requests_per_minute": 1}, 404, "", ""},
		{"user not found", "GET", "/api/v1/users/999999", admin, nil, 404, "", ""},
		{"user id not a number", "GET", "/api/v1/users/abc", admin, nil, 404, "", ""},
		{"roles empty", "PUT", fmt.Sprintf("/api/v1/users/%d/roles", u.ID), admin, map[string]any{"roles": []string{}}, 400, "roles", ""},
		{"backend weight", "PATCH", "/api/v1/backends/b1", admin, map[string]any{"weight": 20000}, 400, "weight", ""},
		{"backend not found", "PATCH", "/api/v1/backends/nope", admin, map[string]any{"weight": 1}, 404, "", "backend_not_found"},
		{"register bad url", "POST", "/internal/v1/backends/register", testInternalToken, map[string]any{"id": "b2", "url": "ftp://x", "engine_kind": "sim", "models": []string{"a"}}, 400, "url", ""},
		{"register bad kind", "POST", "/internal/v1/backends/register", testInternalToken, map[string]any{"id": "b2", "url": "http://x", "engine_kind": "gpt", "models": []string{"a"}}, 400, "engine_kind", ""},
		{"register no models", "POST", "/internal/v1/backends/register", testInternalToken, map[string]any{"id": "b2", "url": "http://x", "engine_kind": "sim"}, 400, "models", ""},
		{"register bad id", "POST", "/internal/v1/backends/register", testInternalToken, map[string]any{"id": "a b", "url": "http://x", "engine_kind": "sim", "models": []string{"a"}}, 400, "id", ""},
		{"heartbeat bad state", "POST", "/internal/v1/backends/b1/heartbeat", testInternalToken, map[string]any{"state": "sleepy"}, 400, "state", ""},
		{"heartbeat kv usage", "POST", "/internal/v1/backends/b1/heartbeat", testInternalToken, map[string]any{"kv_cache_usage": 2}, 400, "kv_cache_usage", ""},
		{"heartbeat unknown", "POST", "/internal/v1/backends/nope/heartbeat", testInternalToken, map[string]any{"state": "healthy"}, 404, "", "backend_not_found"},
		{"unknown route", "GET", "/api/v1/nothing", admin, nil, 404, "", ""},
		{"wrong method", "PUT", "/api/v1/models", admin, map[string]any{}, 405, "", ""},
		{"body too large", "POST", "/api/v1/api-keys", u.Token, `{"name":"` + strings.Repeat("x", 1<<20) + `"}`, 413, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := tc.do(tt.method, tt.path, tt.body, bearer(tt.tok))
			if r.Status != tt.status {
				t.Fatalf("status %d, want %d: %s", r.Status, tt.status, r.Body)
			}
			e := r.apiErr(t)
			got := ""
			if e.Error.Param != nil {
				got = *e.Error.Param
			}
			if got != tt.param {
				t.Errorf("param %q, want %q (%s)", got, tt.param, e.Error.Message)
			}
			if tt.code != "" && (e.Error.Code == nil || *e.Error.Code != tt.code) {
				t.Errorf("code %v, want %q", e.Error.Code, tt.code)
			}
			if ct := r.Header.Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type %q", ct)
			}
		})
	}
}

func TestPaginationAndModelVisibility(t *testing.T) {
	tc := startControl(t, nil)
	admin := tc.adminToken()
	u := tc.createUser(admin, "user")
	dev := tc.createUser(admin, "developer")
	for i := range 5 {
		tc.createKey(u.Token, map[string]any{"name": fmt.Sprintf("k%d", i)})
	}
	// Page through u's 5 keys two at a time.
	var ids []int64
	after := ""
	for page := 0; ; page++ {
		if page > 5 {
			t.Fatal("pagination does not end")
		}
		var l struct {
			Object  string `json:"object"`
			Data    []struct{ ID int64 }
			HasMore bool   `json:"has_more"`
			LastID  *int64 `json:"last_id"`
		}
		tc.call("GET", "/api/v1/api-keys?limit=2"+after, u.Token, nil, 200).decode(t, &l)
		if l.Object != "list" {
			t.Fatalf("object %q", l.Object)
		}
		for _, d := range l.Data {
			ids = append(ids, d.ID)
		}
		if len(l.Data) > 0 && (l.LastID == nil || *l.LastID != l.Data[len(l.Data)-1].ID) {
			t.Errorf("last_id %v does not name the last item", l.LastID)
		}
		if !l.HasMore {
			break
		}
		after = fmt.Sprintf("&after=%d", *l.LastID)
	}
	if len(ids) != 5 {
		t.Fatalf("paged through %d keys, want 5: %v", len(ids), ids)
	}
	for i := 1; i < len(ids); i++ {
		if ids[i] <= ids[i-1] {
			t.Fatalf("ids not increasing: %v", ids)
		}
	}

	// Visibility: public, restricted by role, restricted by user, disabled.
	for _, m := range []map[string]any{
		{"name": "pub", "type": "chat"},
		{"name": "devs-only", "type": "chat", "visibility": "restricted", "allowed_roles": []string{"developer"}},
		{"name": "u-only", "type": "completion", "visibility": "restricted", "allowed_users": []int64{u.ID}},
		{"name": "off", "type": "chat", "enabled": false},
	} {
		tc.call("POST", "/api/v1/models", admin, m, 201)
	}
	names := func(tok string) []string {
		var l struct{ Data []struct{ Name string } }
		tc.call("GET", "/api/v1/models?limit=100", tok, nil, 200).decode(t, &l)
		var out []string
		for _, d := range l.Data {
			out = append(out, d.Name)
		}
		return out
	}
	for _, tt := range []struct {
		who  string
		tok  string
		want []string
	}{
		{"user", u.Token, []string{"pub", "u-only"}},
		{"developer", dev.Token, []string{"pub", "devs-only"}},
		{"admin", admin, []string{"pub", "devs-only", "u-only", "off"}},
	} {
		if diff := cmp.Diff(tt.want, names(tt.tok)); diff != "" {
			t.Errorf("%s sees (-want +got):\n%s", tt.who, diff)
		}
	}
	tc.call("GET", "/api/v1/models/devs-only", u.Token, nil, 404)
	tc.call("GET", "/api/v1/models/devs-only", dev.Token, nil, 200)
	tc.call("GET", "/api/v1/models/off", u.Token, nil, 404)

	// PATCH replaces aliases; GET by alias finds the model; nullable quota round trip.
	var m struct {
		Name    string   `json:"name"`
		Aliases []string `json:"aliases"`
		Price   float64  `json:"input_price_per_million"`
	}
	tc.call("PATCH", "/api/v1/models/pub", admin, map[string]any{"aliases": []string{"p1", "p2"}, "input_price_per_million": 1.25}, 200).decode(t, &m)
	if diff := cmp.Diff([]string{"p1", "p2"}, m.Aliases); diff != "" || m.Price != 1.25 {
		t.Errorf("patched model %+v", m)
	}
	tc.call("GET", "/api/v1/models/p2", u.Token, nil, 200).decode(t, &m)
	if m.Name != "pub" {
		t.Errorf("alias p2 resolves to %q", m.Name)
	}
	var q struct {
		RPM    *int   `json:"requests_per_minute"`
		Budget *int64 `json:"monthly_token_budget"`
	}
	tc.call("PUT", fmt.Sprintf("/api/v1/users/%d/quota", u.ID), admin, map[string]any{"requests_per_minute": 30, "monthly_token_budget": 1000000}, 200).decode(t, &q)
	if q.RPM == nil || *q.RPM != 30 || q.Budget == nil || *q.Budget != 1000000 {
		t.Errorf("quota %+v", q)
	}
	tc.call("PUT", fmt.Sprintf("/api/v1/users/%d/quota", u.ID), admin, map[string]any{"requests_per_minute": nil}, 200).decode(t, &q)
	if q.RPM != nil || q.Budget != nil {
		t.Errorf("quota after reset %+v, want unlimited", q)
	}
}
