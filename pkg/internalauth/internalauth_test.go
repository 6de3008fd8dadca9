package internalauth

import (
	"testing"
	"time"
)

func TestBearer(t *testing.T) {
	if !CheckBearer("Bearer abcdefabcdefabcdef", "abcdefabcdefabcdef") {
		t.Error("good token refused")
	}
	for _, h := range []string{"", "Bearer ", "Bearer abc", "abcdefabcdefabcdef", "Basic abcdefabcdefabcdef"} {
		if CheckBearer(h, "abcdefabcdefabcdef") {
			t.Errorf("accepted %q", h)
		}
	}
	if CheckBearer("Bearer ", "") {
		t.Error("empty token must never match")
	}
}

func TestSignVerify(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	id := Identity{UserID: 7, KeyID: 9, Roles: []string{"developer", "user"}}
	h := Sign("tok-0123456789abcdef", id, now)
	get := func(k string) string { return h[k] }
	got, err := Verify("tok-0123456789abcdef", get, now.Add(5*time.Second))
	if err != nil || got.UserID != 7 || got.KeyID != 9 || len(got.Roles) != 2 {
		t.Fatalf("verify: %+v %v", got, err)
	}
	if _, err := Verify("other-token-000000", get, now); err == nil {
		t.Error("wrong token verified")
	}
	if _, err := Verify("tok-0123456789abcdef", get, now.Add(2*MaxSkew)); err == nil {
		t.Error("stale identity verified")
	}
	h[HeaderRoles] = "admin"
	if _, err := Verify("tok-0123456789abcdef", get, now); err == nil {
		t.Error("tampered roles verified")
	}
}
