package proxy

import (
	"time"

	"github.com/maas-platform/maas/gateway/internal/snapshot"
	"github.com/maas-platform/maas/pkg/apierr"
	"github.com/maas-platform/maas/pkg/apikey"
)

// authenticate returns the key of the request's bearer token.
func (h *Handler) authenticate(snap *snapshot.Snapshot, authz []byte, now time.Time) (*snapshot.Key, error) {
	tok, ok := bearer(authz)
	if !ok {
		return nil, &apierr.Error{Kind: apierr.Unauthenticated, Message: "missing API key: send Authorization: Bearer sk-..."}
	}
	k := snap.Key(apikey.Sum(tok))
	if k == nil || k.Expired(now) {
		return nil, &apierr.Error{Kind: apierr.Unauthenticated, Message: "invalid, revoked or expired API key"}
	}
	return k, nil
}

func bearer(authz []byte) ([]byte, bool) {
	const p = "Bearer "
	if len(authz) <= len(p) || !equalFoldASCII(authz[:len(p)], p) {
		return nil, false
	}
	return authz[len(p):], true
}
