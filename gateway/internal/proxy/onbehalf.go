package proxy

import (
	"time"

	"github.com/valyala/fasthttp"

	"github.com/maas-platform/maas/gateway/internal/snapshot"
	"github.com/maas-platform/maas/pkg/apierr"
	"github.com/maas-platform/maas/pkg/apikey"
	"github.com/maas-platform/maas/pkg/internalauth"
)

// ServiceHeader names the platform service that calls /v1/embeddings on a user's behalf
// (control's knowledge ingestion sends "knowledge"); the usage record's endpoint carries
// it ("knowledge:/v1/embeddings").
const ServiceHeader = "X-Maas-Service"

// onBehalf authenticates a platform service calling /v1/embeddings for a user, in place of
// an API key (internalauth's package doc has the contract): the bearer is the internal
// token, and the user's identity comes in internalauth's signed headers, with key id 0.
// The user must exist in the snapshot and be active; the request is then served as the
// user's own — the model's visibility, the user's quotas, the ledger under the user with
// no key — through a key made for it with no limits of its own. Roles come from the
// snapshot, not from the headers. Anything else is a 401: a wrong token, a bad or expired
// signature (internalauth.MaxSkew), a key id, an unknown or disabled user.
func (h *Handler) onBehalf(snap *snapshot.Snapshot, ctx *fasthttp.RequestCtx, now time.Time) (*snapshot.Key, string, error) {
	hdr := &ctx.Request.Header
	if h.o.InternalToken == "" || !internalauth.CheckBearer(string(hdr.Peek("Authorization")), h.o.InternalToken) {
		return nil, "", &apierr.Error{Kind: apierr.Unauthenticated, Message: "invalid, revoked or expired API key"}
	}
	id, err := internalauth.Verify(h.o.InternalToken, func(name string) string { return string(hdr.Peek(name)) }, now)
	if err != nil {
		return nil, "", &apierr.Error{Kind: apierr.Unauthenticated, Message: "invalid or expired signed identity", Err: err}
	}
	if id.KeyID != 0 {
		return nil, "", &apierr.Error{Kind: apierr.Unauthenticated, Message: "a signed identity acting for a user names no API key"}
	}
	u := snap.User(id.UserID)
	if u == nil || !u.Active {
		return nil, "", &apierr.Error{Kind: apierr.Unauthenticated, Message: "the user of the signed identity does not exist or is disabled"}
	}
	return &snapshot.Key{ID: 0, UserID: u.ID, User: u, Scopes: apikey.Inference}, serviceName(hdr.Peek(ServiceHeader)), nil
}

// serviceName is the X-Maas-Service value when it is a short lowercase name, else
// "service".
func serviceName(b []byte) string {
	if len(b) == 0 || len(b) > 32 {
		return "service"
	}
	for _, c := range b {
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '-' && c != '_' {
			return "service"
		}
	}
	return string(b)
}
