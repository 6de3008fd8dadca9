package proxy

import (
	"errors"
	"fmt"
	"io"
	"net/url"
	"sync/atomic"
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
			DisableHeaderNamesNormalizing: true,
			// Answers (a file's content) are relayed as they arrive, never held whole.
			StreamResponseBody: true,
			// A request is sent again on a new connection (the pooled one found closed) only
			// when it is idempotent and its body is bytes, not a stream half read.
			RetryIf: func(r *fasthttp.Request) bool {
				return !r.IsBodyStream() && (r.Header.IsGet() || r.Header.IsHead() || r.Header.IsPut())
			}},
		scheme: u.Scheme, host: u.Host, timeout: timeout,
	}, nil
}

var identityHeaders = []string{internalauth.HeaderUserID, internalauth.HeaderKeyID, internalauth.HeaderRoles,
	internalauth.HeaderTimestamp, internalauth.HeaderSignature}

// forwardRoutes are the bounded route labels of forwarded requests (metrics), longest
// prefix first where one is the prefix of another.
var forwardRoutes = []string{"/api/v1", "/v1/files", "/v1/fine_tuning", "/v1/vector_stores", "/v1/apps"}

func forwardRoute(path []byte) string {
	for _, r := range forwardRoutes {
		if len(path) >= len(r) && string(path[:len(r)]) == r && (len(path) == len(r) || path[len(r)] == '/') {
			return r
		}
	}
	return "other"
}

// bufferBelow is the largest forwarded body with a Content-Length that is read whole
// before it is sent, so that it can be sent again; larger ones, and chunked ones, stream.
const bufferBelow = 64 << 10

// multipartSlack is what multipart framing and the purpose field may add to a file of
// FilesMaxBytes in an upload's body (control allows the same).
const multipartSlack = 1 << 20

// forwardLimit is the largest body a forwarded request may have, and the setting that
// names it in a 413: a file upload (POST /v1/files) may carry a file of FilesMaxBytes,
// any other request MaxBodyBytes.
func (h *Handler) forwardLimit(ctx *fasthttp.RequestCtx) (int64, string) {
	if ctx.IsPost() && string(ctx.Path()) == "/v1/files" {
		return h.o.FilesMaxBytes + multipartSlack, fmt.Sprintf("the upload is larger than the %d bytes a file may have (MAAS_FILES_MAX_BYTES)", h.o.FilesMaxBytes)
	}
	return int64(h.o.MaxBodyBytes), fmt.Sprintf("request body is larger than %d bytes", h.o.MaxBodyBytes)
}

// Forward passes a control-plane request (/api/v1/*, /v1/files*, /v1/fine_tuning/*,
// /v1/vector_stores/*, /v1/apps/*) to control. An API key is authenticated here (it needs
// the scope apikey.ScopeFor names for the path: management for /api/v1) and
// replaced by the caller's identity in headers signed with the internal token; any other
// bearer (a console JWT) goes through untouched for control to check. Identity headers
// sent by the client are always removed.
//
// Bodies are streamed both ways: the request's from the client's connection to control's
// (bounded by forwardLimit: 413 beyond, by Content-Length before anything is sent, or as
// the limit is crossed), the answer's from control to the client, so a file of hundreds of
// megabytes passes with a few buffers of memory. Each forwarded request is counted
// (maas_gateway_forwarded_*) and gets an access log line when its answer has been sent.
func (h *Handler) Forward(ctx *fasthttp.RequestCtx) {
	f := &forwarded{h: h, start: h.o.Now(), route: forwardRoute(ctx.Path())}
	f.reqID = h.RequestID(ctx)
	f.clientReqID = ClientRequestID(ctx)
	f.endpoint = truncate(string(ctx.Path()), 200)
	if err := f.send(ctx); err != nil {
		RefuseUnread(ctx) // the body may be unread
		e := h.writeError(ctx, err)
		f.status = e.Kind.Status()
		f.done()
	}
}

// forwarded is one forwarded request; it lives until its answer has been relayed.
type forwarded struct {
	h                         *Handler
	start                     time.Time
	route, reqID, clientReqID string
	endpoint                  string
	userID, keyID             int64
	status                    int
	resp                      *fasthttp.Response
	body                      io.Reader // resp's body stream
	in, out                   atomic.Int64
	ended                     atomic.Bool
}

// errBodyTooLarge ends the upload of a body that crosses its limit.
var errBodyTooLarge = errors.New("request body too large")

func (f *forwarded) send(ctx *fasthttp.RequestCtx) error {
	h := f.h
	if h.control == nil {
		return apierr.New(apierr.Unavailable, "control plane is not configured")
	}
	req := &ctx.Request
	for _, name := range identityHeaders {
		req.Header.Del(name)
	}
	if tok, ok := bearer(req.Header.Peek("Authorization")); ok && isAPIKey(tok) {
		snap := h.o.Snapshots.Current()
		if snap == nil {
			return notReady()
		}
		// The scope the path needs (management for /api/v1) is checked here and again by control.
		k, err := h.authenticateFor(snap, req.Header.Peek("Authorization"), h.o.Now(), apikey.ScopeFor(string(ctx.Path())))
		if err != nil {
			return err
		}
		f.userID, f.keyID = k.UserID, k.ID
		req.Header.Del("Authorization")
		for name, v := range internalauth.Sign(h.o.InternalToken, internalauth.Identity{
			UserID: k.UserID, KeyID: k.ID, Roles: k.User.Roles}, h.o.Now()) {
			req.Header.Set(name, v)
		}
	}

	limit, tooLarge := h.forwardLimit(ctx)
	cl := req.Header.ContentLength()
	if limit > 0 && int64(cl) > limit {
		return &apierr.Error{Kind: apierr.TooLarge, Message: tooLarge}
	}
	var body *limitedBody
	switch s := ctx.RequestBodyStream(); {
	case s == nil:
	case cl >= 0 && cl <= bufferBelow:
		// A small body with a length (JSON) is read here, as before the server streamed
		// bodies: the client may then send the request again on a new connection when the
		// pooled one to control turns out closed; a stream, half read, could not be.
		f.in.Add(int64(len(ctx.PostBody())))
	default:
		// The server streams request bodies; the upload may take longer than the read
		// timeout meant for a chat request, so the whole request's bound applies.
		if cl > h.o.MaxBodyBytes || cl < 0 {
			_ = ctx.Conn().SetReadDeadline(time.Now().Add(h.o.RequestTimeout))
		}
		body = &limitedBody{r: s, left: limit, n: &f.in}
		if limit <= 0 {
			body.left = -1
		}
		req.SetBodyStream(body, cl)
	}

	req.Header.Set("X-Request-Id", f.reqID)
	req.Header.Set("X-Forwarded-For", ctx.RemoteIP().String())
	req.Header.Del("Connection")
	req.URI().SetScheme(h.control.scheme)
	req.URI().SetHost(h.control.host)
	req.Header.SetHost(h.control.host)

	resp := fasthttp.AcquireResponse()
	if err := h.control.hc.DoTimeout(req, resp, h.control.timeout); err != nil {
		fasthttp.ReleaseResponse(resp)
		if body != nil && body.over {
			return &apierr.Error{Kind: apierr.TooLarge, Message: tooLarge}
		}
		if body != nil && body.failed != nil {
			// The client stopped sending: nobody reads an answer; close the connection.
			ctx.SetConnectionClose()
			return &apierr.Error{Kind: apierr.InvalidRequest, Message: "request body could not be read", Err: body.failed}
		}
		return classify(err, false)
	}
	resp.Header.Del("Connection")
	resp.Header.CopyTo(&ctx.Response.Header)
	ctx.Response.Header.Set("X-Request-Id", f.reqID)
	f.status = resp.StatusCode()
	if s := resp.BodyStream(); s != nil {
		f.resp, f.body = resp, s
		// A file's content may take longer to reach a slow client than the write timeout
		// meant for a JSON answer: the whole request's bound applies, as for a stream.
		_ = ctx.SetWriteDeadline(f.start.Add(h.o.RequestTimeout))
		// The server reads f to the client and closes it when done (or when the client
		// left): f.Close ends the request.
		ctx.Response.SetBodyStream(f, resp.Header.ContentLength())
		return nil
	}
	ctx.Response.SetBody(resp.Body())
	f.out.Add(int64(len(resp.Body())))
	fasthttp.ReleaseResponse(resp)
	f.done()
	return nil
}

// Read relays the answer's body.
func (f *forwarded) Read(p []byte) (int, error) {
	n, err := f.body.Read(p)
	f.out.Add(int64(n))
	return n, err
}

// Close returns control's connection and ends the request.
func (f *forwarded) Close() error {
	if f.resp != nil {
		_ = f.resp.CloseBodyStream()
		fasthttp.ReleaseResponse(f.resp)
		f.resp, f.body = nil, nil
	}
	f.done()
	return nil
}

// done counts the request and writes its access log line, once.
func (f *forwarded) done() {
	if f.ended.Swap(true) {
		return
	}
	h := f.h
	now := h.o.Now()
	dur := now.Sub(f.start)
	h.m.forwarded(f.route, f.status, dur, f.in.Load(), f.out.Load())
	if h.o.AccessLog {
		h.access.write(now, &accessFields{requestID: f.reqID, clientRequestID: f.clientReqID, endpoint: f.endpoint,
			backend: "control", status: f.status, duration: dur, userID: f.userID, keyID: f.keyID,
			attempts: 1})
	}
}

// limitedBody reads a forwarded request's body from the client, failing once more than
// left bytes came.
type limitedBody struct {
	r      io.Reader
	left   int64
	n      *atomic.Int64
	over   bool
	failed error
}

func (b *limitedBody) Read(p []byte) (int, error) {
	if b.left >= 0 && int64(len(p)) > b.left+1 {
		p = p[:b.left+1]
	}
	n, err := b.r.Read(p)
	b.n.Add(int64(n))
	if b.left >= 0 {
		b.left -= int64(n)
		if b.left < 0 {
			b.over = true
			return 0, errBodyTooLarge
		}
	}
	if err != nil && err != io.EOF {
		b.failed = err
	}
	return n, err
}
