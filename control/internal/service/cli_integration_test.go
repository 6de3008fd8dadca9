package service

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/maas-platform/maas/control/internal/user"
	"github.com/maas-platform/maas/pkg/apikey"
	"github.com/maas-platform/maas/pkg/pgdb/pgtest"
)

// run executes a subcommand like main does and returns its stdout.
func run(t *testing.T, o Options, cmd string, pos ...string) (string, error) {
	t.Helper()
	var out bytes.Buffer
	o.LogOut = t.Output()
	err := Exec(context.Background(), cmd, o, pos, &out)
	return out.String(), err
}

func mustRun(t *testing.T, o Options, cmd string, pos ...string) string {
	t.Helper()
	out, err := run(t, o, cmd, pos...)
	if err != nil {
		t.Fatalf("control %s %s: %v", cmd, strings.Join(pos, " "), err)
	}
	return out
}

func TestMigrateCommands(t *testing.T) {
	dbURL := pgtest.EmptyDatabase(t)
	o := cliOptions(t, dbURL)
	m, _ := migrator(t, dbURL)
	latest := m.Latest()
	if latest < 3 {
		t.Fatalf("latest migration %d, want at least 3", latest)
	}
	version := func() int64 {
		t.Helper()
		v, err := strconv.ParseInt(strings.TrimSpace(mustRun(t, o, "migrate", "version")), 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	if v := version(); v != 0 {
		t.Fatalf("fresh database at version %d", v)
	}
	if out := mustRun(t, o, "migrate", "status"); strings.Count(out, "pending") != int(latest) {
		t.Errorf("status on a fresh database:\n%s", out)
	}
	if out := mustRun(t, o, "migrate", "up"); !strings.Contains(out, "applied "+strconv.FormatInt(latest, 10)) {
		t.Errorf("up: %q", out)
	}
	if v := version(); v != latest {
		t.Fatalf("after up: version %d, want %d", v, latest)
	}
	if out := mustRun(t, o, "migrate", "status"); strings.Count(out, "applied") != int(latest) || strings.Contains(out, "pending") {
		t.Errorf("status after up:\n%s", out)
	}
	mustRun(t, o, "migrate", "down")
	if v := version(); v != latest-1 {
		t.Fatalf("after down: version %d, want %d", v, latest-1)
	}
	mustRun(t, o, "migrate", "down", strconv.FormatInt(latest-1, 10))
	if v := version(); v != 0 {
		t.Fatalf("after down %d: version %d, want 0", latest-1, v)
	}
	if out := mustRun(t, o, "migrate", "up"); !strings.Contains(out, "applied "+strconv.FormatInt(latest, 10)) {
		t.Errorf("up again: %q", out)
	}
	if out := mustRun(t, o, "migrate", "up"); !strings.Contains(out, "applied 0") {
		t.Errorf("up when current: %q", out)
	}

	for _, bad := range [][]string{{}, {"sideways"}, {"down", "x"}, {"down", "0"}, {"up", "1"}, {"create"}} {
		if _, err := run(t, o, "migrate", bad...); !IsUsage(err) {
			t.Errorf("migrate %v: %v, want a usage error", bad, err)
		}
	}
}

func TestCreateMigration(t *testing.T) {
	dir := t.TempDir()
	o := Options{Dir: dir}
	now := time.Date(2026, 3, 4, 0, 0, 0, 0, time.UTC)
	p1, err := CreateMigration(dir, "Add widgets", now)
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Base(p1) != "00001_add_widgets.sql" {
		t.Errorf("first migration %s", p1)
	}
	if err := os.WriteFile(filepath.Join(dir, "00007_existing.sql"), []byte("-- +goose Up\n-- +goose Down\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out := mustRun(t, o, "migrate", "create", "more-things")
	if filepath.Base(strings.TrimSpace(out)) != "00008_more_things.sql" {
		t.Errorf("next migration %q", out)
	}
	body, err := os.ReadFile(strings.TrimSpace(out))
	if err != nil {
		t.Fatal(err)
	}
	up, down := strings.Index(string(body), "-- +goose Up"), strings.Index(string(body), "-- +goose Down")
	if up < 0 || down < up {
		t.Errorf("migration body lacks Up/Down sections:\n%s", body)
	}
	if _, err := CreateMigration(dir, "!!!", now); !IsUsage(err) {
		t.Errorf("name without letters: %v", err)
	}
}

// TestBootstrap: the first admin is created once, with a generated password printed once
// (never a fixed default), or with MAAS_BOOTSTRAP_ADMIN_PASSWORD; running it again is a no-op.
func TestBootstrap(t *testing.T) {
	generated := map[string]bool{}
	for range 2 {
		dbURL := pgtest.EmptyDatabase(t)
		o := cliOptions(t, dbURL)
		o.BootstrapAdminPassword = ""
		out := mustRun(t, o, "bootstrap")
		_, pw, ok := strings.Cut(strings.TrimSpace(out), "password=")
		if !ok {
			t.Fatalf("bootstrap printed no password: %q", out)
		}
		pw, _, _ = strings.Cut(pw, " ")
		if len(pw) < 16 {
			t.Fatalf("generated password %q is short", pw)
		}
		generated[pw] = true
		_, pool := migrator(t, dbURL)
		var hash string
		var n int
		if err := pool.QueryRow(context.Background(), `SELECT password_hash, (SELECT count(*) FROM users) FROM users WHERE username = 'admin'`).Scan(&hash, &n); err != nil {
			t.Fatal(err)
		}
		if err := user.VerifyPassword(pw, hash); err != nil {
			t.Errorf("printed password does not verify: %v", err)
		}
		for _, fixed := range []string{"Admin123!", "admin", "password", ""} {
			if user.VerifyPassword(fixed, hash) == nil {
				t.Errorf("admin password is the fixed %q", fixed)
			}
		}
		// Idempotent: nothing printed, nothing created, password unchanged.
		if out := mustRun(t, o, "bootstrap"); strings.Contains(out, "password") {
			t.Errorf("second bootstrap printed %q", out)
		}
		var n2 int
		var hash2 string
		if err := pool.QueryRow(context.Background(), `SELECT password_hash, (SELECT count(*) FROM users) FROM users WHERE username = 'admin'`).Scan(&hash2, &n2); err != nil {
			t.Fatal(err)
		}
		if n != 1 || n2 != 1 || hash2 != hash {
			t.Errorf("users %d → %d, hash changed %v", n, n2, hash != hash2)
		}
	}
	if len(generated) != 2 {
		t.Error("two bootstraps generated the same password")
	}

	// With MAAS_BOOTSTRAP_ADMIN_PASSWORD: nothing printed, that password works.
	dbURL := pgtest.EmptyDatabase(t)
	o := cliOptions(t, dbURL)
	if out := mustRun(t, o, "bootstrap"); out != "" {
		t.Errorf("bootstrap with a configured password printed %q", out)
	}
	_, pool := migrator(t, dbURL)
	var hash string
	if err := pool.QueryRow(context.Background(), `SELECT password_hash FROM users WHERE username = 'admin'`).Scan(&hash); err != nil {
		t.Fatal(err)
	}
	if err := user.VerifyPassword(testAdminPassword, hash); err != nil {
		t.Errorf("configured password does not verify: %v", err)
	}
	if _, err := run(t, testOptionsWith(t, pgtest.EmptyDatabase(t), "short"), "bootstrap"); err == nil {
		t.Error("bootstrap accepted a 5-character password")
	}
}

func testOptionsWith(t *testing.T, dbURL, password string) Options {
	o := cliOptions(t, dbURL)
	o.BootstrapAdminPassword = password
	return o
}

// cliOptions loads options the way main does, from the environment.
func cliOptions(t *testing.T, dbURL string) Options {
	t.Helper()
	for k, v := range map[string]string{
		"MAAS_DATABASE_URL":             dbURL,
		"MAAS_INTERNAL_TOKEN":           testInternalToken,
		"MAAS_SECRET_KEY":               testSecret,
		"MAAS_BOOTSTRAP_ADMIN_PASSWORD": testAdminPassword,
	} {
		t.Setenv(k, v)
	}
	o, _, err := Load(nil)
	if err != nil {
		t.Fatal(err)
	}
	o.HashParams = testOptions(dbURL).HashParams
	return o
}

func TestKeysCreateCommand(t *testing.T) {
	dbURL := pgtest.EmptyDatabase(t)
	o := cliOptions(t, dbURL)
	mustRun(t, o, "bootstrap")
	o.Username, o.KeyName, o.Models = "admin", "make-run", "sim-chat, sim-embedding"
	out := mustRun(t, o, "keys", "create")
	key := strings.TrimSpace(out)
	if !apikey.Valid(key) || out != key+"\n" {
		t.Fatalf("keys create printed %q, want only the key", out)
	}
	_, pool := migrator(t, dbURL)
	var models []string
	sum := apikey.Sum([]byte(key))
	if err := pool.QueryRow(context.Background(), `SELECT models FROM api_keys WHERE key_hash = $1`, sum[:]).Scan(&models); err != nil {
		t.Fatal(err)
	}
	if strings.Join(models, ",") != "sim-chat,sim-embedding" {
		t.Errorf("models %v", models)
	}
	// --scopes (default inference).
	for flag, want := range map[string]string{"": "inference", "management, inference": "inference,management"} {
		o.Scopes = flag
		key := strings.TrimSpace(mustRun(t, o, "keys", "create"))
		var scopes []string
		sum := apikey.Sum([]byte(key))
		if err := pool.QueryRow(context.Background(), `SELECT scopes FROM api_keys WHERE key_hash = $1`, sum[:]).Scan(&scopes); err != nil {
			t.Fatal(err)
		}
		if strings.Join(scopes, ",") != want {
			t.Errorf("--scopes %q: stored %v, want %s", flag, scopes, want)
		}
	}
	o.Scopes = "root"
	if _, err := run(t, o, "keys", "create"); !IsUsage(err) || !strings.Contains(err.Error(), "--scopes") {
		t.Errorf("bad --scopes: %v", err)
	}
	o.Scopes = ""
	o.Username = "nobody"
	if _, err := run(t, o, "keys", "create"); !errors.Is(err, user.ErrNotFound) {
		t.Errorf("unknown user: %v", err)
	}
	o.Username, o.KeyName = "admin", ""
	if _, err := run(t, o, "keys", "create"); !IsUsage(err) {
		t.Errorf("missing --name: %v", err)
	}
}

func TestLoadOptions(t *testing.T) {
	t.Setenv("MAAS_CONTROL_ADDR", "127.0.0.1:9999")
	t.Setenv("MAAS_BACKEND_REMOVE_AFTER", "90s")
	o, pos, err := Load([]string{"down", "--addr", "127.0.0.1:7777", "2", "--dir", "x"})
	if err != nil {
		t.Fatal(err)
	}
	if o.Addr != "127.0.0.1:7777" || o.BackendRemoveAfter != 90*time.Second || o.Dir != "x" || !o.AutoMigrate {
		t.Errorf("options %+v", o)
	}
	if strings.Join(pos, " ") != "down 2" {
		t.Errorf("positional %v", pos)
	}
	t.Setenv("MAAS_AUTO_MIGRATE", "maybe")
	if _, _, err := Load(nil); err == nil || !strings.Contains(err.Error(), "MAAS_AUTO_MIGRATE") {
		t.Errorf("bad MAAS_AUTO_MIGRATE: %v", err)
	}
	t.Setenv("MAAS_AUTO_MIGRATE", "false")
	t.Setenv("MAAS_BACKEND_REMOVE_AFTER", "0")
	if _, _, err := Load(nil); err == nil || !strings.Contains(err.Error(), "MAAS_BACKEND_REMOVE_AFTER") {
		t.Errorf("zero MAAS_BACKEND_REMOVE_AFTER: %v", err)
	}
}
