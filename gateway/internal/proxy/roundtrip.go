package proxy

import (
	"bytes"
	"context"
	"net"
	"sync"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/maas-platform/maas/gateway/internal/upstream"
)

// A non-streamed request is sent by roundTrip rather than HostClient.Do: the same steps as
// fasthttp's own transport (a pooled connection of the backend's HostClient, the request
// written, the response read), but with the connection in our hands, so that
//
//   - the first byte is bounded by FirstByteTimeout: the request carries
//     "Expect: 100-continue", and an engine's HTTP server answers "100 Continue" as soon
//     as it reads the request (fasthttp, Go's net/http, uvicorn for vLLM and SGLang,
//     hyper, cpp-httplib all do) — long before the answer, which engines send whole when
//     the generation is over. A backend that accepts connections and never reads or
//     answers fails over and counts against its breaker; a long generation does not.
//     A backend seen answering without the interim response is remembered and gets no
//     first-byte bound (it would cut its long generations);
//   - ResponseHeaderTimeout (optional) bounds the time to the final response headers, for
//     engines whose HTTP server answers but whose generation may hang;
//   - the connection can be closed at once when the client goes away (watch.go), which
//     tells the backend to stop generating.

// backendGuard lets another goroutine abort the exchange in flight by closing its
// connection. The zero value is ready; it is reused by the pooled call.
type backendGuard struct {
	mu     sync.Mutex
	conn   net.Conn // the backend connection while the request is on it
	reason abortReason
	cancel context.CancelFunc // ends a wait for a LoRA adapter (ondemand.go)
}

type abortReason uint8

const (
	notAborted abortReason = iota
	abortClientGone
	abortShutdown // the shutdown grace is over (judge sees BaseContext done)
)

// attach registers conn as the exchange's connection; false: the exchange was aborted
// already (the caller closes conn).
func (g *backendGuard) attach(conn net.Conn) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.reason != notAborted {
		return false
	}
	g.conn = conn
	return true
}

// detach unregisters the connection (before it goes back to the pool) and reports why the
// exchange was aborted, if it was.
func (g *backendGuard) detach() abortReason {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.conn = nil
	return g.reason
}

// abort closes the exchange's connection (a read in flight fails at once) and keeps why.
func (g *backendGuard) abort(r abortReason) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.reason == notAborted {
		g.reason = r
	}
	if g.conn != nil {
		_ = g.conn.Close()
	}
	if g.cancel != nil {
		g.cancel()
	}
}

// onAbort makes abort call cancel (nil: no longer); false: aborted already.
func (g *backendGuard) onAbort(cancel context.CancelFunc) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.cancel = cancel
	return g.reason == notAborted
}

// aborted reports why the exchange was aborted, if it was.
func (g *backendGuard) aborted() abortReason {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.reason
}

var continue100 = []byte("HTTP/1.1 100")

// roundTrip sends req to u and reads its answer into resp, by deadline at the latest. fresh
// sends it on a new connection (u.Fresh), closed after it.
//
// A failure is stale (failure.stale: retried once on a new connection) when the
// connection was reused from the pool (it carried an earlier exchange) and the request
// failed before any byte of its answer: while it was being written, or while waiting for
// the first byte with nothing received, and not by a timeout or an abort of ours.
func (c *call) roundTrip(u *upstream.Upstream, req *fasthttp.Request, resp *fasthttp.Response, deadline time.Time, fresh bool) failure {
	h, hc := c.h, u.Client
	if fresh {
		hc = u.Fresh
	}
	now := time.Now()
	if !now.Before(deadline) {
		return failure{err: fasthttp.ErrTimeout}
	}
	firstBy := time.Time{}
	_, noContinue := h.noContinue.Load(u)
	if !noContinue {
		req.Header.Set("Expect", "100-continue")
		if h.o.FirstByteTimeout > 0 {
			firstBy = now.Add(h.o.FirstByteTimeout)
		}
	}
	if len(req.Header.UserAgent()) == 0 {
		req.Header.SetUserAgent("maas-gateway")
	}
	cc, err := hc.AcquireConn(deadline.Sub(now), false)
	if err != nil {
		return failure{err: err}
	}
	conn := cc.Conn()
	reused := !cc.LastUseTime().IsZero() // set when a connection goes back to the pool
	if !c.guard.attach(conn) {
		hc.CloseConn(cc)
		return failure{err: net.ErrClosed, clientGone: c.guard.detach() == abortClientGone}
	}
	// fail closes the connection (its state is unknown) and describes the failure;
	// noAnswer: not one byte of the answer was received.
	fail := func(err error, noAnswer bool) failure {
		reason := c.guard.detach()
		hc.CloseConn(cc)
		stale := reused && noAnswer && reason == notAborted && !isTimeout(err, false)
		return failure{err: err, stale: stale, clientGone: reason == abortClientGone}
	}
	if err := conn.SetWriteDeadline(deadline); err != nil {
		return fail(err, false)
	}
	bw := hc.AcquireWriter(conn)
	err = req.Write(bw)
	if err == nil {
		err = bw.Flush()
	}
	hc.ReleaseWriter(bw)
	if err != nil {
		return fail(err, true)
	}

	// answerBy bounds the whole answer: the request's deadline, or sooner the response
	// header timeout (counted from the request written, as in net/http).
	answerBy := deadline
	if h.o.ResponseHeaderTimeout > 0 {
		if by := time.Now().Add(h.o.ResponseHeaderTimeout); by.Before(answerBy) {
			answerBy = by
		}
	}
	readBy := answerBy
	if !firstBy.IsZero() && firstBy.Before(readBy) {
		readBy = firstBy
	}
	br := hc.AcquireReader(conn)
	if err := conn.SetReadDeadline(readBy); err != nil {
		hc.ReleaseReader(br)
		return fail(err, false)
	}
	// The first byte: a status line (interim or final) starts with these 12 bytes.
	head, err := br.Peek(len(continue100))
	if err != nil {
		none := br.Buffered() == 0
		hc.ReleaseReader(br)
		return fail(err, none)
	}
	if !bytes.Equal(head, continue100) && !noContinue {
		h.noContinue.Store(u, struct{}{}) // the answer came without "100 Continue"
	}
	if err := conn.SetReadDeadline(answerBy); err != nil {
		hc.ReleaseReader(br)
		return fail(err, false)
	}
	err = resp.ReadLimitBody(br, hc.MaxResponseBodySize)
	hc.ReleaseReader(br)
	if err != nil {
		return fail(err, false)
	}
	switch c.guard.detach() {
	case abortClientGone:
		hc.CloseConn(cc) // the answer arrived, but the client went away meanwhile
		return failure{err: net.ErrClosed, clientGone: true}
	case abortShutdown:
		hc.CloseConn(cc) // the answer arrived whole: it is delivered
		return failure{}
	}
	if fresh || resp.ConnectionClose() || req.ConnectionClose() {
		hc.CloseConn(cc) // u.Fresh keeps no connection: its next request dials anew
	} else {
		hc.ReleaseConn(cc)
	}
	return failure{}
}
