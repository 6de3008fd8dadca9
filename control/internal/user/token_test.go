package user

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

func TestTokens(t *testing.T) {
	key := []byte("0123456789abcdef0123456789abcdef")
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	tok := NewTokens(key, 30*time.Minute)
	tok.now = func() time.Time { return now }
	raw, err := tok.Issue(42, "alice", 7)
	if err != nil {
		t.Fatal(err)
	}
	got, err := tok.Parse(raw)
	if err != nil || got != (Session{UserID: 42, Version: 7}) {
		t.Fatalf("Parse = %+v, %v; want user 42 version 7", got, err)
	}

	later := NewTokens(key, 30*time.Minute)
	later.now = func() time.Time { return now.Add(31 * time.Minute) }
	if _, err := later.Parse(raw); !errors.Is(err, ErrTokenExpired) {
		t.Errorf("Parse after expiry: %v, want ErrTokenExpired", err)
	}

	other := NewTokens([]byte("another-key-another-key-another!!"), 30*time.Minute)
	other.now = tok.now
	if _, err := other.Parse(raw); err == nil || errors.Is(err, ErrTokenExpired) {
		t.Errorf("Parse with another key: %v, want a signature error", err)
	}

	// alg=none and a token without expiry are refused.
	none, err := jwt.NewWithClaims(jwt.SigningMethodNone, jwt.RegisteredClaims{Subject: "42", Issuer: issuer,
		ExpiresAt: jwt.NewNumericDate(now.Add(time.Hour))}).SignedString(jwt.UnsafeAllowNoneSignatureType)
	if err != nil {
		t.Fatal(err)
	}
	noExp, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.RegisteredClaims{Subject: "42", Issuer: issuer}).SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	for name, bad := range map[string]string{"alg none": none, "no exp": noExp, "garbage": "a.b.c", "tampered": raw[:len(raw)-2] + strings.Repeat("A", 2)} {
		if _, err := tok.Parse(bad); err == nil {
			t.Errorf("%s: Parse accepted it", name)
		}
	}
}
