package e2e

import (
	"encoding/json"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/maas-platform/maas/pkg/internalauth"
	"github.com/maas-platform/maas/pkg/testenv"
)

func TestForwardToControl(t *testing.T) {
	e := newEnv(t, false)
	_, url := e.gateway()
	key := e.key(url, nil)

	get := func(auth string, hdr ...string) (int, []byte) {
		req, _ := http.NewRequest("GET", url+"/api/v1/users/me", nil)
		if auth != "" {
			req.Header.Set("Authorization", "Bearer "+auth)
		}
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var b json.RawMessage
		_ = json.NewDecoder(resp.Body).Decode(&b)
		return resp.StatusCode, b
	}

	// Console login through the gateway, then the JWT passes through untouched.
	var login struct {
		AccessToken string `json:"access_token"`
	}
	st, _, body := post(t, url+"/api/v1/auth/login", "", `{"username":"admin","password":"`+e.p.AdminPassword+`"}`)
	if st != 200 || json.Unmarshal(body, &login) != nil || login.AccessToken == "" {
		t.Fatalf("login through the gateway: %d %s", st, body)
	}
	// The console API takes a key with the management scope (the default key has only
	// inference: the gateway refuses it before control sees it).
	mgmt := e.key(url, map[string]any{"scopes": []string{"inference", "management"}})
	for name, auth := range map[string]string{"jwt": login.AccessToken, "management key": mgmt} {
		st, b := get(auth)
		if st != 200 || !strings.Contains(string(b), `"admin"`) {
			t.Errorf("%s: status %d %s", name, st, b)
		}
	}
	if st, b := get(key); st != 403 || !strings.Contains(string(b), "insufficient_scope") {
		t.Errorf("inference key on the console API: status %d %s, want 403 insufficient_scope", st, b)
	}
	// Identity headers from a client are dropped, even well-formed ones.
	spoof := internalauth.Sign("not-the-real-token-000", internalauth.Identity{UserID: 1, KeyID: 1, Roles: []string{"admin"}}, time.Now())
	var hdr []string
	for k, v := range spoof {
		hdr = append(hdr, k, v)
	}
	if st, b := get("", hdr...); st != 401 {
		t.Errorf("spoofed identity: status %d %s", st, b)
	}
	if st, _ := get("sk-" + strings.Repeat("z", 43)); st != 401 {
		t.Errorf("bad key forwarded: status %d", st)
	}
}

func TestInvalidConfigExitsWithStatus2(t *testing.T) {
	bin := testenv.Build(t).Gateway
	for _, tc := range []struct {
		env     []string
		wantVar string
	}{
		{[]string{"MAAS_DATABASE_URL=postgresql://u@127.0.0.1:1/db"}, "MAAS_INTERNAL_TOKEN"},
		{[]string{"MAAS_DATABASE_URL=postgresql://u@127.0.0.1:1/db", "MAAS_INTERNAL_TOKEN=0123456789abcdef", "MAAS_QUEUE_TIMEOUT=never"}, "MAAS_QUEUE_TIMEOUT"},
	} {
		cmd := exec.Command(bin)
		cmd.Env = tc.env
		cmd.Dir = t.TempDir()
		out, err := cmd.CombinedOutput()
		ee, ok := err.(*exec.ExitError)
		if !ok || ee.ExitCode() != 2 || !strings.Contains(string(out), tc.wantVar) {
			t.Errorf("env %v: exit %v, output %q; want status 2 naming %s", tc.env, err, out, tc.wantVar)
		}
		if strings.Count(strings.TrimSpace(string(out)), "\n") > 0 {
			t.Errorf("want one line, got %q", out)
		}
	}
}
