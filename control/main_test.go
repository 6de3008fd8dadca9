package main

import (
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/maas-platform/maas/pkg/apikey"
	"github.com/maas-platform/maas/pkg/testenv"
)

// TestEndToEnd starts the real control binary through pkg/testenv (which also proves
// testenv's process contract): migrations and bootstrap on start, login, user and key
// creation, the key authenticating, /metrics, and a graceful SIGTERM.
func TestEndToEnd(t *testing.T) {
	p := testenv.NewPlatform(t, testenv.Options{})
	ctl := p.StartControl()
	admin := p.AdminToken()

	var u struct {
		ID int64 `json:"id"`
	}
	p.Do("POST", p.ControlURL+"/api/v1/users", admin, map[string]any{"username": "alice", "password": "Alice-Pass-123", "roles": []string{"developer"}}, 201, &u)
	alice := p.Login("alice", "Alice-Pass-123")
	key := p.CreateKey(alice, map[string]any{"name": "e2e", "models": []string{"sim-chat"}})
	if !apikey.Valid(key) {
		t.Fatalf("key %q", key)
	}
	var me struct {
		Username string   `json:"username"`
		Roles    []string `json:"roles"`
	}
	// An inference key (the default) is refused by the console API; a management key that an
	// admin granted acts as its owner.
	p.Do("GET", p.ControlURL+"/api/v1/users/me", key, nil, 403, nil)
	mgmt := p.CreateKey(admin, map[string]any{"name": "console", "user_id": u.ID, "scopes": []string{"management"}})
	p.Do("GET", p.ControlURL+"/api/v1/users/me", mgmt, nil, 200, &me)
	if me.Username != "alice" || strings.Join(me.Roles, ",") != "developer" {
		t.Errorf("me via key: %+v", me)
	}
	p.Do("GET", p.ControlURL+"/api/v1/users", alice, nil, 403, nil)

	status, body := testenv.DoJSON(t, "GET", p.ControlURL+"/metrics", "", nil, nil)
	if status != 200 || !strings.Contains(string(body), `maas_control_http_requests_total{method="POST",route="/api/v1/api-keys",status="201"} 2`) {
		t.Errorf("metrics (%d) lack the key creation:\n%.2000s", status, body)
	}
	out := ctl.Output()
	if strings.Contains(out, p.AdminPassword) || strings.Contains(out, p.Secret) || strings.Contains(out, p.Token) || strings.Contains(out, key) || strings.Contains(out, mgmt) {
		t.Error("control's output contains a secret")
	}
	if !strings.Contains(out, "MAAS_INTERNAL_TOKEN=[redacted]") {
		t.Errorf("effective configuration not logged redacted:\n%s", out)
	}

	// `control keys create` against the same database prints only a key.
	cmd := exec.Command(p.Bin.Control, "keys", "create", "--username", "alice", "--name", "cli")
	cmd.Env = append([]string{"PATH=/usr/bin:/bin"}, p.Env()...)
	cmd.Dir = t.TempDir()
	cliOut, err := cmd.Output()
	if err != nil {
		t.Fatalf("keys create: %v", err)
	}
	if k := strings.TrimSpace(string(cliOut)); !apikey.Valid(k) || strings.Count(string(cliOut), "\n") != 1 {
		t.Errorf("keys create printed %q", cliOut)
	}

	ctl.Signal(syscall.SIGTERM)
	code, ok := ctl.Wait(20 * time.Second)
	if !ok || code != 0 {
		t.Errorf("after SIGTERM: exit %d (exited %v)\n%s", code, ok, ctl.Output())
	}
}

// TestInvalidConfiguration: a bad setting is one message naming the variable, exit 2.
func TestInvalidConfiguration(t *testing.T) {
	bin := testenv.Build(t).Control
	tests := []struct {
		name    string
		args    []string
		env     []string
		mention string
	}{
		{"no internal token", nil, []string{"MAAS_DATABASE_URL=postgresql://u@127.0.0.1:1/db"}, "MAAS_INTERNAL_TOKEN"},
		{"no database", nil, []string{"MAAS_INTERNAL_TOKEN=0123456789abcdef"}, "MAAS_DATABASE_URL"},
		{"bad database scheme", nil, []string{"MAAS_INTERNAL_TOKEN=0123456789abcdef", "MAAS_DATABASE_URL=mysql://x@h/db"}, "MAAS_DATABASE_URL"},
		{"production without secret", nil, []string{"MAAS_INTERNAL_TOKEN=0123456789abcdef", "MAAS_DATABASE_URL=postgresql://u@127.0.0.1:1/db", "MAAS_ENVIRONMENT=production"}, "MAAS_SECRET_KEY"},
		{"production with the example secret", nil, []string{"MAAS_INTERNAL_TOKEN=0123456789abcdef", "MAAS_DATABASE_URL=postgresql://u@127.0.0.1:1/db", "MAAS_ENVIRONMENT=production", "MAAS_SECRET_KEY=your-secret-key-change-in-production"}, "MAAS_SECRET_KEY"},
		{"bad duration", nil, []string{"MAAS_BACKEND_REMOVE_AFTER=soon"}, "MAAS_BACKEND_REMOVE_AFTER"},
		{"unknown command", []string{"frobnicate"}, nil, "unknown command"},
		{"unknown flag", []string{"serve", "--nope"}, nil, "nope"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cmd := exec.Command(bin, tt.args...)
			cmd.Env = append([]string{"PATH=/usr/bin:/bin"}, tt.env...)
			cmd.Dir = t.TempDir()
			out, err := cmd.CombinedOutput()
			exit, ok := err.(*exec.ExitError)
			if !ok || exit.ExitCode() != 2 {
				t.Fatalf("exit %v, want status 2; output:\n%s", err, out)
			}
			if !strings.Contains(string(out), tt.mention) {
				t.Errorf("output does not name %s:\n%s", tt.mention, out)
			}
			if n := strings.Count(strings.TrimSpace(string(out)), "\n"); tt.args == nil && n > 0 {
				t.Errorf("more than one line:\n%s", out)
			}
		})
	}
}
