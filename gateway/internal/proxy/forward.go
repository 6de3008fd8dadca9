package proxy

import (
	"net/url"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/maas-platform/maas/pkg/apierr"
	"github.com/maas-platform/maas/pkg/apikey"
	"github.com/maas-platform/maas/pkg/internalauth"
)

type controlClient struct {
	hc      *fasthttp.HostClient
	scheme  string
	host    string
	timeout time.Duration
}

func newControlClient(raw string, timeout time.Duration) (*controlClient, error) {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return nil, &url.Error{Op: "parse", URL: raw, Err: err}
	}
	addr := u.Host
	if u.Port() == "" {
		if u.Scheme == "https" {
			addr += ":443"
		} else {
			addr += ":80"
		}
	}
	return &controlClient{
		hc: &fasthttp.HostClient{Addr: addr, IsTLS: u.Scheme == "https", Name: "maas-gateway",
			NoDefaultUserAgentHeader: true, MaxIdleConnDuration: 60 * time.Second,
			DisableHeaderNamesNormalizing: true},
		scheme: u.Scheme, host: u.Host, timeout: timeout,
	}, nil
}

var identityHeaders = []string{internalauth.HeaderUserID, internalauth.HeaderKeyID, internalauth.HeaderRoles,
	internalauth.HeaderTimestamp, internalauth.HeaderSignature}

// Forward passes a control-plane request (/api/v1/*, /v1/files*, /v1/fine_tuning/*,
// /v1/vector_stores/*, /v1/apps/*) to control. An API key is authenticated here (it needs
// the scope apikey.ScopeFor names for the path: management for /api/v1) and
// replaced by the caller's identity in headers signed with the internal token; any other
// bearer (a console JWT) goes through untouched for control to check. Identity headers
// sent by the client are always removed.
func (h *Handler) Forward(ctx *fasthttp.RequestCtx) {
	reqID := h.RequestID(ctx)
	if h.control == nil {
		h.writeError(ctx, apierr.New(apierr.Unavailable, "control plane is not configured"))
		return
	}
	req := &ctx.Request
	for _, name := range identityHeaders {
		req.Header.Del(name)
	}
	if tok, ok := bearer(req.Header.Peek("Authorization")); ok && isAPIKey(tok) {
		snap := h.o.Snapshots.Current()
		if snap == nil {
			h.writeError(ctx, notReady())
			return
		}
		// The scope the path needs (management for /api/v1) is checked here and again by control.
		k, err := h.authenticateFor(snap, req.Header.Peek("Authorization"), h.o.Now(), apikey.ScopeFor(string(ctx.Path())))
		if err != nil {
			h.writeError(ctx, err)
			return
		}
		req.Header.Del("Authorization")
		for name, v := range internalauth.Sign(h.o.InternalToken, internalauth.Identity{
			UserID: k.UserID, KeyID: k.ID, Roles: k.User.Roles}, h.o.Now()) {
			req.Header.Set(name, v)
		}
	}
	req.Header.Set("X-Request-Id", reqID)
	req.Header.Set("X-Forwarded-For", ctx.RemoteIP().String())
	req.Header.Del("Connection")
	req.URI().SetScheme(h.control.scheme)
	req.URI().SetHost(h.control.host)
	req.Header.SetHost(h.control.host)

	resp := fasthttp.AcquireResponse()
	defer fasthttp.ReleaseResponse(resp)
	if err := h.control.hc.DoTimeout(req, resp, h.control.timeout); err != nil {
		h.writeError(ctx, classify(err, false))
		return
	}
	resp.Header.Del("Connection")
	resp.CopyTo(&ctx.Response)
	ctx.Response.Header.Set("X-Request-Id", reqID)
}
