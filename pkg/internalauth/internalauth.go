// Package internalauth authenticates the platform's processes to each other with the shared
// MAAS_INTERNAL_TOKEN: workers and gateways calling control's /internal endpoints send it as a
// bearer token, and the gateway passes a caller's identity to control in headers signed with
// it (HMAC-SHA256), so control can trust an identity the gateway already authenticated.
//
// The other way round, a platform service embeds for a user through the gateway (control's
// knowledge ingestion): POST /v1/embeddings with the internal token as its bearer
// ("Authorization: Bearer MAAS_INTERNAL_TOKEN"), the user's identity in the signed headers
// with KeyID 0 (Sign; roles are ignored: the gateway takes them from its snapshot), and
// the service's name in X-Maas-Service (a short lowercase name, e.g. "knowledge"). The
// gateway accepts it on /v1/embeddings only, in place of an API key; the user must exist
// and be active; the model's visibility and the user's quotas apply as for the user's own
// key, and the usage record carries the user, no key, and the endpoint
// "<service>:/v1/embeddings". A wrong token, a bad signature, one older than MaxSkew, a
// KeyID other than 0 or an unknown or disabled user is a 401.
package internalauth

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"strconv"
	"strings"
	"time"
)

// Header names of a forwarded identity.
const (
	HeaderUserID    = "X-Maas-User-Id"
	HeaderKeyID     = "X-Maas-Key-Id"
	HeaderRoles     = "X-Maas-Roles"
	HeaderTimestamp = "X-Maas-Identity-Ts"
	HeaderSignature = "X-Maas-Identity-Sig"
)

// MaxSkew is how old a signed identity may be.
const MaxSkew = 60 * time.Second

// ErrBadSignature reports a forwarded identity that does not verify.
var ErrBadSignature = errors.New("internalauth: bad identity signature")

// CheckBearer reports whether the Authorization header value carries token. It runs in
// constant time with respect to the token's contents.
func CheckBearer(authorization, token string) bool {
	got, ok := strings.CutPrefix(authorization, "Bearer ")
	if !ok || token == "" {
		return false
	}
	return subtle.ConstantTimeCompare([]byte(got), []byte(token)) == 1
}

// Identity is a caller authenticated by the gateway.
type Identity struct {
	UserID int64
	KeyID  int64
	Roles  []string
}

// Sign returns the signature headers for id at time now.
func Sign(token string, id Identity, now time.Time) map[string]string {
	ts := strconv.FormatInt(now.Unix(), 10)
	h := map[string]string{
		HeaderUserID:    strconv.FormatInt(id.UserID, 10),
		HeaderKeyID:     strconv.FormatInt(id.KeyID, 10),
		HeaderRoles:     strings.Join(id.Roles, ","),
		HeaderTimestamp: ts,
	}
	h[HeaderSignature] = mac(token, h[HeaderUserID], h[HeaderKeyID], h[HeaderRoles], ts)
	return h
}

// Verify checks signed identity headers read through get and returns the identity.
func Verify(token string, get func(string) string, now time.Time) (Identity, error) {
	uid, kid, roles, ts, sig := get(HeaderUserID), get(HeaderKeyID), get(HeaderRoles), get(HeaderTimestamp), get(HeaderSignature)
	if token == "" || sig == "" {
		return Identity{}, ErrBadSignature
	}
	want := mac(token, uid, kid, roles, ts)
	if !hmac.Equal([]byte(sig), []byte(want)) {
		return Identity{}, ErrBadSignature
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return Identity{}, ErrBadSignature
	}
	if d := now.Sub(time.Unix(sec, 0)); d > MaxSkew || d < -MaxSkew {
		return Identity{}, ErrBadSignature
	}
	var id Identity
	if id.UserID, err = strconv.ParseInt(uid, 10, 64); err != nil {
		return Identity{}, ErrBadSignature
	}
	if id.KeyID, err = strconv.ParseInt(kid, 10, 64); err != nil {
		return Identity{}, ErrBadSignature
	}
	if roles != "" {
		id.Roles = strings.Split(roles, ",")
	}
	return id, nil
}

func mac(token string, parts ...string) string {
	m := hmac.New(sha256.New, []byte(token))
	for _, p := range parts {
		m.Write([]byte(p))
		m.Write([]byte{0})
	}
	return hex.EncodeToString(m.Sum(nil))
}
