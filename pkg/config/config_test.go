package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestNormalizeDatabaseURL(t *testing.T) {
	tests := []struct {
		in, want string
		wantErr  bool
	}{
		{in: "postgresql+asyncpg://maas:maas@localhost:5432/maas", want: "postgresql://maas:maas@localhost:5432/maas"},
		{in: "postgresql://maas:maas@localhost:5432/maas", want: "postgresql://maas:maas@localhost:5432/maas"},
		{in: "postgres://u@127.0.0.1:5/db?sslmode=disable", want: "postgresql://u@127.0.0.1:5/db?sslmode=disable"},
		{in: "host=/tmp dbname=x", want: "host=/tmp dbname=x"},
		{in: "mysql://u@h/db", wantErr: true},
		{in: "", wantErr: true},
		{in: "postgresql:///db", wantErr: true},
		{in: "postgresql:///db?host=/tmp", want: "postgresql:///db?host=/tmp"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := NormalizeDatabaseURL(tt.in)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if !tt.wantErr && got != tt.want {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}

func load(t *testing.T, env map[string]string, dotenv string, args ...string) (*Common, error) {
	t.Helper()
	dir := t.TempDir()
	if dotenv != "" {
		if err := os.WriteFile(filepath.Join(dir, ".env"), []byte(dotenv), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for _, k := range []string{"MAAS_DEBUG", "MAAS_ENVIRONMENT", "MAAS_DATABASE_URL", "MAAS_DATABASE_URL_SYNC", "MAAS_REDIS_URL", "MAAS_SECRET_KEY", "MAAS_ACCESS_TOKEN_EXPIRE_MINUTES", "MAAS_INTERNAL_TOKEN", "MAAS_CONTROL_URL"} {
		t.Setenv(k, "")
		os.Unsetenv(k)
	}
	for k, v := range env {
		t.Setenv(k, v)
	}
	l, err := NewLoader("test", dir)
	if err != nil {
		t.Fatal(err)
	}
	var c Common
	c.Bind(l)
	if err := l.Parse(args); err != nil {
		return nil, err
	}
	return &c, c.Validate(true, true)
}

func TestPrecedence(t *testing.T) {
	c, err := load(t, map[string]string{"MAAS_ACCESS_TOKEN_EXPIRE_MINUTES": "45"},
		"MAAS_DATABASE_URL=postgresql+asyncpg://a:b@h:1/d\nMAAS_ACCESS_TOKEN_EXPIRE_MINUTES=10\nMAAS_DEBUG=true\n",
		"-database-url", "postgresql://x@y:2/z")
	if err != nil {
		t.Fatal(err)
	}
	if c.DatabaseURL != "postgresql://x@y:2/z" {
		t.Errorf("flag should win: %q", c.DatabaseURL)
	}
	if c.AccessTokenExpire != 45*time.Minute {
		t.Errorf("environment should win over .env: %v", c.AccessTokenExpire)
	}
	if !c.Debug {
		t.Error(".env value not applied")
	}
}

func TestInvalid(t *testing.T) {
	tests := []struct {
		name string
		env  map[string]string
		want string
	}{
		{"bad env", map[string]string{"MAAS_DATABASE_URL": "postgresql://h/d", "MAAS_ENVIRONMENT": "staging"}, "MAAS_ENVIRONMENT"},
		{"no db", map[string]string{}, "MAAS_DATABASE_URL"},
		{"bad db", map[string]string{"MAAS_DATABASE_URL": "mysql://h/d"}, "MAAS_DATABASE_URL"},
		{"bad int", map[string]string{"MAAS_DATABASE_URL": "postgresql://h/d", "MAAS_ACCESS_TOKEN_EXPIRE_MINUTES": "soon"}, "MAAS_ACCESS_TOKEN_EXPIRE_MINUTES"},
		{"zero expiry", map[string]string{"MAAS_DATABASE_URL": "postgresql://h/d", "MAAS_ACCESS_TOKEN_EXPIRE_MINUTES": "0"}, "MAAS_ACCESS_TOKEN_EXPIRE_MINUTES"},
		{"bad bool", map[string]string{"MAAS_DATABASE_URL": "postgresql://h/d", "MAAS_DEBUG": "maybe"}, "MAAS_DEBUG"},
		{"bad redis", map[string]string{"MAAS_DATABASE_URL": "postgresql://h/d", "MAAS_REDIS_URL": "http://x"}, "MAAS_REDIS_URL"},
		{"prod example secret", map[string]string{"MAAS_DATABASE_URL": "postgresql://h/d", "MAAS_ENVIRONMENT": "production", "MAAS_SECRET_KEY": ExampleSecretKey}, "MAAS_SECRET_KEY"},
		{"prod empty secret", map[string]string{"MAAS_DATABASE_URL": "postgresql://h/d", "MAAS_ENVIRONMENT": "production"}, "MAAS_SECRET_KEY"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := load(t, tt.env, "")
			var ce *Error
			if !errors.As(err, &ce) {
				t.Fatalf("want *Error naming %s, got %v", tt.want, err)
			}
			if ce.Name != tt.want {
				t.Errorf("error names %s, want %s (%v)", ce.Name, tt.want, err)
			}
		})
	}
}

func TestRedacted(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("MAAS_SECRET_KEY", "topsecretvalue")
	t.Setenv("MAAS_DATABASE_URL", "postgresql://u:hunter2@h/d")
	l, err := NewLoader("x", dir)
	if err != nil {
		t.Fatal(err)
	}
	var c Common
	c.Bind(l)
	if err := l.Parse(nil); err != nil {
		t.Fatal(err)
	}
	for _, a := range l.Redacted() {
		s := a.(interface{ String() string }).String()
		if strings.Contains(s, "topsecretvalue") || strings.Contains(s, "hunter2") {
			t.Errorf("secret leaked: %s", s)
		}
	}
}
