// Package passthrough is the benchmark's reference floor: the thinnest fasthttp reverse
// proxy (no parsing beyond spotting a streamed request, no auth, no logging). It is not the
// product; it shows how much of the gateway's cost any fasthttp proxy pays anyway.
//
// A streamed answer is relayed the way the gateway relays it: the client's response body
// is a [fasthttp.BodyWriterTo] that fasthttp's connection goroutine drives, reading from the
// backend and writing each read to the client as one flushed chunk. There is no pipe and no
// second goroutine per stream (fasthttp's SetBodyStreamWriter would add both), so the
// reference pays no hand-off the gateway does not pay either.
package passthrough

import (
	"bytes"
	"io"
	"sync"
	"time"

	"github.com/valyala/fasthttp"
)

// IdleTimeout closes a pooled connection to the upstream after it sat idle this long:
// below the simulator's keep-alive (5 s, vLLM's), like the gateway's default
// MAAS_UPSTREAM_IDLE_TIMEOUT, so that a request is never sent on a connection the upstream
// is closing (fasthttp does not retry a POST, so that would be a 502).
const IdleTimeout = 3 * time.Second

// Handler returns a request handler forwarding to upstream (host:port).
func Handler(upstream string) fasthttp.RequestHandler { return handler(upstream, IdleTimeout) }

func handler(upstream string, idle time.Duration) fasthttp.RequestHandler {
	plain := &fasthttp.HostClient{Addr: upstream, MaxConns: 20000, ReadTimeout: 5 * time.Minute, MaxIdleConnDuration: idle}
	streaming := &fasthttp.HostClient{Addr: upstream, MaxConns: 20000, ReadTimeout: 5 * time.Minute, MaxIdleConnDuration: idle,
		StreamResponseBody: true}
	streamMarker := []byte(`"stream":true`)
	return func(ctx *fasthttp.RequestCtx) {
		req := &ctx.Request
		req.SetHost(upstream)
		if !bytes.Contains(req.Body(), streamMarker) {
			if err := plain.Do(req, &ctx.Response); err != nil {
				ctx.Error(err.Error(), fasthttp.StatusBadGateway)
			}
			return
		}
		resp := fasthttp.AcquireResponse()
		if err := streaming.Do(req, resp); err != nil {
			fasthttp.ReleaseResponse(resp)
			ctx.Error(err.Error(), fasthttp.StatusBadGateway)
			return
		}
		ctx.SetStatusCode(resp.StatusCode())
		resp.Header.CopyTo(&ctx.Response.Header)
		ctx.Response.Header.Del("Content-Length")
		r := relays.Get().(*relay)
		r.resp = resp
		r.body = resp.BodyStream()
		if r.body == nil { // a body fasthttp read whole (e.g. empty)
			r.body = bytes.NewReader(resp.Body())
		}
		ctx.Response.SetBodyStream(r, -1)
	}
}

// relay is a streamed response body: the backend's body, copied to the client by the
// connection's goroutine. It is not safe for concurrent use (one connection drives it).
type relay struct {
	resp *fasthttp.Response // the backend's response; nil once released
	body io.Reader          // its body stream
	buf  []byte
}

var relays = sync.Pool{New: func() any { return &relay{buf: make([]byte, 16<<10)} }}

var (
	_ fasthttp.BodyWriterTo        = (*relay)(nil)
	_ fasthttp.ReadCloserWithError = (*relay)(nil)
)

// SupportsBodyWriteTo tells fasthttp to call WriteTo rather than Read.
func (r *relay) SupportsBodyWriteTo() bool { return true }

// WriteTo copies the backend's body to w until it ends or a write fails (the client went
// away). fasthttp frames every Write as one chunk and flushes it, so each read from the
// backend (an event, or the events that arrived together) reaches the client at once.
func (r *relay) WriteTo(w io.Writer) (n int64, err error) {
	for {
		k, rerr := r.body.Read(r.buf)
		if k > 0 {
			m, werr := w.Write(r.buf[:k])
			n += int64(m)
			if werr != nil {
				return n, werr
			}
		}
		if rerr == io.EOF {
			return n, nil
		}
		if rerr != nil {
			return n, rerr
		}
	}
}

// Read is the io.Reader form of WriteTo, for a server that does not use WriteTo.
func (r *relay) Read(p []byte) (int, error) { return r.body.Read(p) }

// CloseWithError is called by fasthttp once the response is written or dropped: it
// closes the backend's body (a partly read one closes its connection) and returns the
// relay to its pool.
func (r *relay) CloseWithError(error) error {
	if r.resp == nil {
		return nil
	}
	_ = r.resp.CloseBodyStream()
	fasthttp.ReleaseResponse(r.resp)
	r.resp, r.body = nil, nil
	relays.Put(r)
	return nil
}

// Serve listens on addr until the server is shut down.
func Serve(addr, upstream string) error {
	s := &fasthttp.Server{Handler: Handler(upstream), Name: "passthrough", Concurrency: 100000}
	return s.ListenAndServe(addr)
}
