package proxy

import (
	"context"
	"time"

	"github.com/maas-platform/maas/gateway/internal/snapshot"
	"github.com/maas-platform/maas/pkg/apierr"
	"github.com/maas-platform/maas/pkg/apikey"
)

// keyFinder is the optional capability of Options.Snapshots (snapshot.Store has it) to find
// a key the snapshot does not know yet: one created a moment ago. See snapshot.Store.FindKey.
type keyFinder interface {
	FindKey(ctx context.Context, h apikey.Hash) (*snapshot.Key, error)
}

// authenticate returns the key of the request's bearer token, for the OpenAI API: the key
// must have the inference scope.
func (h *Handler) authenticate(snap *snapshot.Snapshot, authz []byte, now time.Time) (*snapshot.Key, error) {
	return h.authenticateFor(snap, authz, now, apikey.Inference)
}

// authenticateFor returns the key of the request's bearer token when it has the scopes
// need. A key the snapshot does not know is looked up once (keyFinder) before it is refused.
func (h *Handler) authenticateFor(snap *snapshot.Snapshot, authz []byte, now time.Time, need apikey.Scopes) (*snapshot.Key, error) {
	tok, ok := bearer(authz)
	if !ok {
		return nil, &apierr.Error{Kind: apierr.Unauthenticated, Message: "missing API key: send Authorization: Bearer sk-..."}
	}
	sum := apikey.Sum(tok)
	k := snap.Key(sum)
	if k == nil {
		k = h.findKey(tok, sum)
	}
	if k == nil || k.Expired(now) {
		return nil, &apierr.Error{Kind: apierr.Unauthenticated, Message: "invalid, revoked or expired API key"}
	}
	if !k.Scopes.Has(need) {
		return nil, &apierr.Error{Kind: apierr.PermissionDenied, Code: "insufficient_scope", Message: apikey.ScopeError(need)}
	}
	return k, nil
}

// findKey looks up a well-formed key the snapshot does not know; nil when it is unknown or
// the look-up failed (the finder logs and counts failures).
func (h *Handler) findKey(tok []byte, sum apikey.Hash) *snapshot.Key {
	f, ok := h.o.Snapshots.(keyFinder)
	if !ok || !apikey.Valid(string(tok)) {
		return nil
	}
	k, _ := f.FindKey(h.o.BaseContext, sum)
	return k
}

func bearer(authz []byte) ([]byte, bool) {
	const p = "Bearer "
	if len(authz) <= len(p) || !equalFoldASCII(authz[:len(p)], p) {
		return nil, false
	}
	return authz[len(p):], true
}
