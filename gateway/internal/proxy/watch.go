package proxy

import (
	"context"
	"sync"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/maas-platform/maas/pkg/peerclose"
)

// watchAfter is how long a non-streamed request waits for its backend before the gateway
// starts watching the client's connection: requests answered sooner cost nothing, and a
// client that leaves is noticed at most watchAfter after the request started (at once
// after that).
const watchAfter = 100 * time.Millisecond

// clientWatch notices a client that closes its connection while its non-streamed request
// waits for a backend, and aborts the backend exchange (fasthttp has no close
// notification). After watchAfter, a goroutine waits on the connection's readability
// through the runtime poller and peeks at it without consuming anything (MSG_PEEK): end of
// file or a reset means the client is gone; bytes mean a pipelined request, which ends the
// watch (it is left for fasthttp to read). The watch ends by moving the connection's read
// deadline into the past, which wakes the waiting goroutine; fasthttp clears the deadline
// after the handler returns. While it watches, the end of the shutdown grace (the
// handler's BaseContext) aborts the exchange too, so that a request cut at shutdown is
// answered and recorded rather than abandoned.
//
// One clientWatch belongs to one pooled call object, for its lifetime.
type clientWatch struct {
	g     *backendGuard
	base  context.Context // ends when requests must stop (shutdown grace over)
	timer *time.Timer
	done  chan struct{} // the watching goroutine has returned

	mu    sync.Mutex
	state watchState
	ctx   *fasthttp.RequestCtx
}

type watchState uint8

const (
	watchIdle     watchState = iota // no request
	watchArmed                      // the timer runs
	watchWatching                   // a goroutine waits on the connection
	watchStopping                   // the request is over: the goroutine is being woken
	watchOver                       // the goroutine returned by itself (client gone, pipelined bytes)
)

func newClientWatch(g *backendGuard, base context.Context) *clientWatch {
	w := &clientWatch{g: g, base: base, done: make(chan struct{}, 1)}
	w.timer = time.AfterFunc(time.Hour, w.fire)
	w.timer.Stop()
	return w
}

// arm starts watching ctx's connection after watchAfter; it does nothing for a
// connection the watch cannot peek at (TLS, in-memory).
func (w *clientWatch) arm(ctx *fasthttp.RequestCtx) {
	if !peerclose.Watchable(ctx.Conn()) {
		return
	}
	w.mu.Lock()
	w.ctx, w.state = ctx, watchArmed
	w.mu.Unlock()
	w.timer.Reset(watchAfter)
}

// disarm ends the watch and waits for its goroutine; ctx is not touched after it returns.
func (w *clientWatch) disarm() {
	w.mu.Lock()
	switch w.state {
	case watchIdle:
		w.mu.Unlock()
		return
	case watchArmed:
		w.timer.Stop() // a callback already under way finds the state idle and returns
	case watchWatching:
		w.state = watchStopping
		if w.ctx.SetReadDeadline(time.Unix(1, 0)) != nil {
			_ = w.ctx.Conn().SetReadDeadline(time.Unix(1, 0))
		}
		w.mu.Unlock()
		<-w.done
		w.mu.Lock()
	case watchOver:
		w.mu.Unlock()
		<-w.done
		w.mu.Lock()
	}
	w.state, w.ctx = watchIdle, nil
	w.mu.Unlock()
}

// fire is the timer's callback: it watches the connection until the client goes away or
// disarm wakes it.
func (w *clientWatch) fire() {
	w.mu.Lock()
	if w.state != watchArmed {
		w.mu.Unlock()
		return
	}
	w.state = watchWatching
	ctx := w.ctx
	// fasthttp's deadline for reading the request is still set; the wait has none.
	cleared := ctx.SetReadDeadline(time.Time{}) == nil
	w.mu.Unlock()
	aborted := make(chan struct{})
	stopBase := context.AfterFunc(w.base, func() { w.g.abort(abortShutdown); close(aborted) })
	gone := cleared && peerclose.WaitClosed(ctx.Conn())
	if !stopBase() {
		<-aborted // the shutdown's abort has started: it must end before the call is reused
	}
	w.mu.Lock()
	if gone && w.state == watchWatching {
		w.g.abort(abortClientGone)
	}
	if w.state == watchWatching {
		w.state = watchOver
	}
	w.mu.Unlock()
	w.done <- struct{}{}
}
