package sim

import (
	"time"

	"github.com/valyala/fasthttp"

	"github.com/maas-platform/maas/pkg/peerclose"
)

// watchClient notices a client that closes its connection while its non-streamed request
// is generating (fasthttp has no close notification; vLLM aborts such a request). A
// goroutine waits on the connection's readability through the runtime poller and peeks
// without consuming (MSG_PEEK): end of file or a reset closes gone; bytes (a pipelined
// request) end the watch, left for fasthttp to read. stop ends the watch by moving the
// read deadline into the past and waits for the goroutine; fasthttp resets the deadline
// before it reads the next request. On connections it cannot peek at, gone is nil.
func watchClient(ctx *fasthttp.RequestCtx) (gone <-chan struct{}, stop func()) {
	conn := ctx.Conn()
	if !peerclose.Watchable(conn) || ctx.SetReadDeadline(time.Time{}) != nil {
		return nil, func() {}
	}
	g := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		if peerclose.WaitClosed(conn) {
			close(g)
		}
	}()
	return g, func() {
		if ctx.SetReadDeadline(time.Unix(1, 0)) != nil {
			_ = conn.SetReadDeadline(time.Unix(1, 0))
		}
		<-done
	}
}
