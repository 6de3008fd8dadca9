package proxy

import (
	"context"
	"time"

	"github.com/valyala/bytebufferpool"
	"github.com/valyala/fasthttp"

	"github.com/maas-platform/maas/gateway/internal/panics"
	"github.com/maas-platform/maas/gateway/internal/snapshot"
	"github.com/maas-platform/maas/gateway/internal/upstream"
	"github.com/maas-platform/maas/pkg/apierr"
)

// call is one inference request. It is pooled; a streamed call lives until its stream
// writer ends, after the fasthttp handler returned, so it never keeps the RequestCtx.
type call struct {
	h     *Handler
	start time.Time
	reqID string // ours (RequestID)
	ep    endpoint
	// clientReqID is the client's X-Request-Id when sane, kept for the ledger.
	clientReqID string

	// authenticate, parse, authorise
	key *snapshot.Key
	// service names the platform service acting for key's user (onbehalf.go); "" for a
	// request made with an API key.
	service  string
	fields   requestFields
	model    *snapshot.Model
	label    string // model metric label
	reqModel string // model as asked, for the ledger when unresolved

	// admit
	ticket Ticket

	// rewrite
	body     *bytebufferpool.ByteBuffer // body sent upstream (a copy, possibly edited)
	uri      []byte                     // scratch for the backend URL (upstreamURI)
	injected bool                       // include_usage added by us: strip the usage chunk

	// dispatch
	lease    *upstream.Lease
	backend  string
	attempts int
	// base bounds a stream (request timeout, shutdown); it is handed to the stream writer.
	base       context.Context
	cancelBase context.CancelFunc

	// relay and account
	status    int
	errType   string
	use       usage
	estimated bool
	ttft      time.Duration
	chunks    int64 // token events seen (fallback count)
	lastTok   time.Time
	finishing bool // finish has started: a panic from here on only releases what is held

	// guard aborts a non-streamed exchange in flight; watch notices a client that leaves
	// (roundtrip.go, watch.go). watch lives as long as the pooled call object.
	guard backendGuard
	watch *clientWatch
	// edit holds a stream event being edited (relay.go, stripUsage); kept with the pooled
	// call unless it grew large.
	edit []byte
}

func (c *call) reset() {
	edit := c.edit[:0]
	if cap(edit) > 64<<10 {
		edit = nil
	}
	*c = call{watch: c.watch, edit: edit, uri: c.uri[:0]}
}

func (c *call) path() string { return endpointPaths[c.ep] }

// upstreamURI is the backend's URL for the call (base, then the endpoint's path), built
// in the call's own scratch (fasthttp copies it), which the pooled call keeps: a steady
// flow of requests allocates nothing here.
func (c *call) upstreamURI(base string) []byte {
	c.uri = append(append(c.uri[:0], base...), c.path()...)
	return c.uri
}

// serve runs a request's stages in order. A streamed call leaves serve once the stream is
// committed; its writer (relay.go) finishes it.
func (h *Handler) serve(ctx *fasthttp.RequestCtx, ep endpoint) {
	c := h.calls.Get().(*call)
	c.h, c.ep, c.start, c.ttft = h, ep, h.o.Now(), -1
	// The call itself holds the id for RequestID: a pointer in the user value costs no
	// allocation where the id string would (the call outlives the handler's use of ctx).
	c.reqID = h.newRequestID(ctx)
	ctx.SetUserValue(reqIDKey, c)
	c.clientReqID = ClientRequestID(ctx)
	h.m.inFlight.Inc()
	streaming := false
	defer func() {
		if streaming {
			return // the stream writer owns the call (and recovers its own panics)
		}
		if v := recover(); v != nil {
			h.o.Panics.Record(panics.Handler, v, "request_id", c.reqID)
			c.recovered(ctx)
		}
	}()
	snap, err := c.authenticate(ctx)
	var body []byte
	if err == nil {
		body, err = h.requestBody(ctx)
	}
	if err == nil {
		c.fields, err = readRequest(body, ep, h.o.Limits)
	}
	if err == nil {
		err = c.authorize(snap)
	}
	if err == nil {
		err = c.admit()
	}
	if err == nil {
		c.rewrite(body)
		streaming, err = c.dispatch(ctx)
		if streaming {
			return // the stream writer finishes the call
		}
	}
	if err != nil {
		if body == nil {
			RefuseUnread(ctx)
		}
		e := h.writeError(ctx, err)
		c.status, c.errType = e.Kind.Status(), e.Kind.Type()
		if c.lease == nil && c.attempts == 0 {
			h.m.rejections.WithLabelValues(reason(e)).Inc()
		}
	}
	c.finish()
}

// recovered answers a request whose handler panicked with a 500 and ends the call; the
// panic was recorded.
func (c *call) recovered(ctx *fasthttp.RequestCtx) {
	ctx.Response.Reset()
	ctx.Response.Header.Set("X-Request-Id", c.reqID)
	apierr.WriteFast(ctx, apierr.New(apierr.Internal, "internal error"))
	if c.finishing {
		c.abandon()
		return
	}
	c.status, c.errType = 500, apierr.Internal.Type()
	c.finish()
}

// hook runs the test hook at where (a test's panic injector); nil in production.
func (c *call) hook(where string) {
	if c.h.testHook != nil {
		c.h.testHook(where)
	}
}
