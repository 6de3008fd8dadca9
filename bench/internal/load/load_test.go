package load

import (
	"bufio"
	"context"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
)

func serve(t *testing.T, h fasthttp.RequestHandler) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &fasthttp.Server{Handler: h}
	go s.Serve(ln)
	t.Cleanup(func() { s.Shutdown() })
	return ln.Addr().String()
}

func TestClosedLoopCountsErrorsAndLatency(t *testing.T) {
	n := 0
	addr := serve(t, func(ctx *fasthttp.RequestCtx) {
		n++
		if n%10 == 0 {
			ctx.SetStatusCode(500)
			return
		}
		ctx.SetBodyString(`{"ok":true}`)
	})
	r := ClosedLoop(context.Background(), Target{Addr: addr, Path: "/x", Body: []byte(`{}`)}, 1, 200*time.Millisecond)
	if r.Requests < 20 || r.Errors == 0 || int64(len(r.Latencies)) != r.Requests-r.Errors {
		t.Fatalf("requests %d errors %d latencies %d", r.Requests, r.Errors, len(r.Latencies))
	}
	if Percentile(r.Latencies, 50) <= 0 || Percentile(r.Latencies, 99) < Percentile(r.Latencies, 50) {
		t.Error("percentiles not ordered")
	}
}

func TestStreamNeedsDone(t *testing.T) {
	withDone := true
	addr := serve(t, func(ctx *fasthttp.RequestCtx) {
		ctx.SetContentType("text/event-stream")
		done := withDone
		ctx.SetBodyStreamWriter(func(w *bufio.Writer) {
			w.WriteString("data: {}\n\n")
			w.Flush()
			if done {
				w.WriteString("data: [DONE]\n\n")
			}
		})
	})
	tgt := Target{Addr: addr, Path: "/s", Body: []byte(`{"stream":true}`), Stream: true}
	r := ClosedLoop(context.Background(), tgt, 2, 100*time.Millisecond)
	if r.Errors != 0 || len(r.TTFTs) == 0 {
		t.Fatalf("errors %d (%s) ttfts %d", r.Errors, r.FirstError, len(r.TTFTs))
	}
	withDone = false
	r = ClosedLoop(context.Background(), tgt, 1, 50*time.Millisecond)
	if r.Errors == 0 {
		t.Error("a stream without [DONE] must count as an error")
	}
}

func TestOpenLoopRate(t *testing.T) {
	addr := serve(t, func(ctx *fasthttp.RequestCtx) { ctx.SetBodyString("ok") })
	r := OpenLoop(context.Background(), Target{Addr: addr, Path: "/", Body: []byte(`{}`)}, 200, 500*time.Millisecond, 8)
	if r.Requests < 90 || r.Requests > 101 {
		t.Errorf("sent %d requests at 200/s for 0.5s", r.Requests)
	}
}

func TestOpenStreams(t *testing.T) {
	addr := serve(t, func(ctx *fasthttp.RequestCtx) {
		ctx.SetBodyStreamWriter(func(w *bufio.Writer) {
			w.WriteString("data: {}\n\n")
			w.Flush()
			time.Sleep(300 * time.Millisecond)
		})
	})
	s := OpenStreams(context.Background(), Target{Addr: addr, Path: "/", Body: []byte(`{}`)}, 50)
	defer s.Close()
	if s.Opened != 50 || s.Failed != 0 {
		t.Errorf("opened %d failed %d (%s)", s.Opened, s.Failed, s.FirstEr)
	}
}

// events is a streamed body written event by event: fasthttp frames each Write of
// WriteTo as one chunk and flushes it.
type events struct{ n int }

func (e *events) SupportsBodyWriteTo() bool { return true }
func (e *events) Read([]byte) (int, error)  { return 0, io.EOF }
func (e *events) WriteTo(w io.Writer) (int64, error) {
	for range e.n {
		if _, err := io.WriteString(w, "data: {}\n\n"); err != nil {
			return 0, err
		}
	}
	_, err := io.WriteString(w, "data: [DONE]\n\n")
	return 0, err
}

func TestChunks(t *testing.T) {
	for _, tc := range []struct {
		name string
		h    fasthttp.RequestHandler
		want int
	}{
		{"flushed per event", func(ctx *fasthttp.RequestCtx) { ctx.Response.SetBodyStream(&events{n: 5}, -1) }, 6},
		{"one write", func(ctx *fasthttp.RequestCtx) {
			ctx.SetBodyStreamWriter(func(w *bufio.Writer) { w.WriteString(strings.Repeat("data: {}\n\n", 5)) })
		}, 1},
		{"content length", func(ctx *fasthttp.RequestCtx) { ctx.SetBodyString("data: [DONE]\n\n") }, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr := serve(t, tc.h)
			n, err := Chunks(context.Background(), Target{Addr: addr, Path: "/v1/chat/completions", Body: []byte(`{"stream":true}`)})
			if err != nil || n != tc.want {
				t.Fatalf("%d chunks, %v; want %d", n, err, tc.want)
			}
		})
	}
}

// A refused stream with a short body (read whole by the client, no body stream) is an
// error carrying its status and body.
func TestStreamRefusalIsAnError(t *testing.T) {
	addr := serve(t, func(ctx *fasthttp.RequestCtx) {
		ctx.Error("upstream went away", fasthttp.StatusBadGateway)
	})
	r := ClosedLoop(context.Background(), Target{Addr: addr, Path: "/x", Body: []byte(`{"stream":true}`), Stream: true}, 1, 50*time.Millisecond)
	if r.Requests == 0 || r.Errors != r.Requests || !strings.Contains(r.FirstError, "status 502: upstream went away") {
		t.Fatalf("requests %d errors %d first %q", r.Requests, r.Errors, r.FirstError)
	}
}
