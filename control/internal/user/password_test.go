package user

import (
	"errors"
	"strings"
	"testing"
)

func fastParams() HashParams {
	return HashParams{MemoryKiB: 64, Time: 1, Threads: 1, SaltLen: 16, KeyLen: 32}
}

func TestHashPassword(t *testing.T) {
	h1, err := HashPassword("correct horse battery", DefaultHashParams())
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(h1, "$argon2id$v=19$m=19456,t=2,p=1$") {
		t.Errorf("hash %q is not an argon2id PHC string with the default parameters", h1)
	}
	h2, err := HashPassword("correct horse battery", DefaultHashParams())
	if err != nil {
		t.Fatal(err)
	}
	if h1 == h2 {
		t.Error("two hashes of the same password are equal: salt is not random")
	}
	if strings.Contains(h1, "correct horse") {
		t.Error("hash contains the password")
	}
}

func TestVerifyPassword(t *testing.T) {
	good, err := HashPassword("s3cret-password", fastParams())
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		password string
		hash     string
		want     error // nil, ErrMismatch, or errOther for any other error
	}{
		{"right password", "s3cret-password", good, nil},
		{"wrong password", "s3cret-passwore", good, ErrMismatch},
		{"empty password", "", good, ErrMismatch},
		{"not argon2id", "s3cret-password", "$2a$10$abcdefghijklmnopqrstuv", errOther},
		{"bcrypt-like garbage", "s3cret-password", "plain", errOther},
		{"bad version", "s3cret-password", strings.Replace(good, "v=19", "v=16", 1), errOther},
		{"bad params", "s3cret-password", strings.Replace(good, "m=64", "m=0", 1), errOther},
		{"bad salt", "s3cret-password", replacePart(good, 4, "!!!"), errOther},
		{"changed cost", "s3cret-password", strings.Replace(good, "t=1", "t=2", 1), ErrMismatch},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := VerifyPassword(tt.password, tt.hash)
			switch {
			case tt.want == nil && err != nil:
				t.Fatalf("VerifyPassword: %v, want nil", err)
			case tt.want == ErrMismatch && !errors.Is(err, ErrMismatch):
				t.Fatalf("VerifyPassword: %v, want ErrMismatch", err)
			case tt.want == errOther && (err == nil || errors.Is(err, ErrMismatch)):
				t.Fatalf("VerifyPassword: %v, want a malformed-hash error", err)
			}
		})
	}
}

var errOther = errors.New("other")

func replacePart(phc string, i int, v string) string {
	parts := strings.Split(phc, "$")
	parts[i] = v
	return strings.Join(parts, "$")
}

func TestGeneratePassword(t *testing.T) {
	seen := map[string]bool{}
	for range 50 {
		p, err := GeneratePassword()
		if err != nil {
			t.Fatal(err)
		}
		if len(p) != 24 {
			t.Fatalf("len(%q) = %d, want 24", p, len(p))
		}
		if seen[p] {
			t.Fatalf("GeneratePassword repeated %q", p)
		}
		seen[p] = true
	}
}
