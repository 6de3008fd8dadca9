package proxy

import (
	"github.com/valyala/fasthttp"

	"github.com/maas-platform/maas/gateway/internal/snapshot"
	"github.com/maas-platform/maas/gateway/internal/upstream"
	"github.com/maas-platform/maas/pkg/apierr"
	"github.com/maas-platform/maas/pkg/internalauth"
)

// authenticate checks the request's API key against the current snapshot. It runs before
// the body is read.
func (c *call) authenticate(ctx *fasthttp.RequestCtx) (*snapshot.Snapshot, error) {
	snap := c.h.o.Snapshots.Current()
	if snap == nil {
		return nil, notReady()
	}
	k, err := c.h.authenticate(snap, ctx.Request.Header.Peek("Authorization"), c.start)
	if err != nil {
		// A platform service embedding for a user signs the user's identity instead of
		// sending a key (onbehalf.go); embeddings only.
		if c.ep != epEmbeddings || len(ctx.Request.Header.Peek(internalauth.HeaderSignature)) == 0 {
			return nil, err
		}
		if k, c.service, err = c.h.onBehalf(snap, ctx, c.start); err != nil {
			return nil, err
		}
	}
	c.key = k
	return snap, nil
}

// authorize resolves the model asked for and checks that the key may use it.
func (c *call) authorize(snap *snapshot.Snapshot) error {
	name := c.fields.Model
	m := snap.Model(string(name))
	if m == nil || !m.Enabled {
		c.reqModel = string(name)
		return &apierr.Error{Kind: apierr.NotFound, Param: "model", Code: "model_not_found",
			Message: "the model `" + truncate(string(name), 128) + "` does not exist or is not available"}
	}
	c.model, c.label, c.reqModel = m, m.Name, m.Name
	if !m.VisibleTo(c.key.User) || !c.key.AllowsModel(m, string(name)) {
		msg := "this API key may not use the model `" + m.Name + "`"
		if c.service != "" {
			msg = "the user may not use the model `" + m.Name + "`"
		}
		return &apierr.Error{Kind: apierr.PermissionDenied, Param: "model", Code: "model_not_allowed", Message: msg}
	}
	if m.Policy == snapshot.PolicyPrefixAffinity && len(c.fields.Prefix) > 0 {
		c.fields.affinity = upstream.AffinityKey(c.fields.Prefix) // only where routing uses it
	}
	return nil
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}
