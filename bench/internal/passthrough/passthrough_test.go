package passthrough

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
)

// serve runs a fasthttp server with h on a loopback port until the test ends.
func serve(t *testing.T, h fasthttp.RequestHandler) string {
	t.Helper()
	return serveWith(t, &fasthttp.Server{Handler: h})
}

func serveWith(t *testing.T, s *fasthttp.Server) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); s.Serve(ln) }()
	t.Cleanup(func() { s.Shutdown(); <-done })
	return ln.Addr().String()
}

// openStream sends a streamed chat request on a raw connection and returns the reader
// positioned after the response headers.
func openStream(t *testing.T, addr string) (net.Conn, *bufio.Reader) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	body := `{"model":"m","stream":true}`
	fmt.Fprintf(conn, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(conn)
	status, err := br.ReadString('\n')
	if err != nil || !strings.Contains(status, " 200 ") {
		t.Fatalf("status %q: %v", status, err)
	}
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		if line == "\r\n" {
			return conn, br
		}
	}
}

// readChunk reads one chunk of a chunked body.
func readChunk(t *testing.T, br *bufio.Reader) string {
	t.Helper()
	var n int
	if _, err := fmt.Fscanf(br, "%x\r\n", &n); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, n+2)
	if _, err := io.ReadFull(br, b); err != nil {
		t.Fatal(err)
	}
	return string(b[:n])
}

// TestStreamRelayedByConnectionGoroutine holds streams open through the pass-through and
// checks that each event reaches the client before the backend sends the next one, and
// that a held stream costs the pass-through no goroutine beyond its connection's (the
// old relay, a pipe filled by a goroutine per stream, held two).
func TestStreamRelayedByConnectionGoroutine(t *testing.T) {
	release := make(chan struct{})
	backend := serve(t, func(ctx *fasthttp.RequestCtx) {
		ctx.SetContentType("text/event-stream")
		ctx.SetBodyStreamWriter(func(w *bufio.Writer) {
			w.WriteString("data: {\"n\":1}\n\n")
			w.Flush()
			<-release
			w.WriteString("data: [DONE]\n\n")
			w.Flush()
		})
	})
	front := serve(t, Handler(backend))

	// Warm up: one stream end to end, so that pools and client cleaners exist before the count.
	_, br := openStream(t, front)
	releaseOne := func() { release <- struct{}{} }
	go releaseOne()
	readChunk(t, br)
	readChunk(t, br)

	const n = 40
	before := runtime.NumGoroutine()
	var readers []*bufio.Reader
	for range n {
		_, br := openStream(t, front)
		if got := readChunk(t, br); got != "data: {\"n\":1}\n\n" {
			t.Fatalf("first event %q", got)
		}
		readers = append(readers, br)
	}
	held := runtime.NumGoroutine() - before
	// Per held stream: the backend's connection goroutine and its stream writer (a
	// fasthttp SetBodyStreamWriter), and the pass-through's connection goroutine.
	if held > 3*n+5 {
		t.Errorf("%d goroutines for %d held streams: more than the connection goroutine per stream in the pass-through", held, n)
	}
	close(release)
	for _, br := range readers {
		if got := readChunk(t, br); got != "data: [DONE]\n\n" {
			t.Fatalf("last event %q", got)
		}
		if got := readChunk(t, br); got != "" {
			t.Fatalf("want the last chunk, got %q", got)
		}
	}
}

func TestStreamBodyIsBodyWriterTo(t *testing.T) {
	backend := serve(t, func(ctx *fasthttp.RequestCtx) {
		ctx.SetContentType("text/event-stream")
		ctx.SetBodyString("data: [DONE]\n\n")
	})
	var ctx fasthttp.RequestCtx
	ctx.Request.Header.SetMethod("POST")
	ctx.Request.SetRequestURI("/v1/chat/completions")
	ctx.Request.SetBodyString(`{"stream":true}`)
	Handler(backend)(&ctx)
	bw, ok := ctx.Response.BodyStream().(fasthttp.BodyWriterTo)
	if !ok || !bw.SupportsBodyWriteTo() {
		t.Fatalf("streamed body is %T, not a fasthttp.BodyWriterTo", ctx.Response.BodyStream())
	}
	var sb strings.Builder
	if _, err := bw.WriteTo(&sb); err != nil || sb.String() != "data: [DONE]\n\n" {
		t.Fatalf("WriteTo: %q, %v", sb.String(), err)
	}
	ctx.Response.Reset() // closes the stream: the relay goes back to its pool
}

func TestNonStreamedForwarded(t *testing.T) {
	backend := serve(t, func(ctx *fasthttp.RequestCtx) {
		ctx.SetContentType("application/json")
		fmt.Fprintf(ctx, `{"path":%q}`, ctx.Path())
	})
	front := serve(t, Handler(backend))
	req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.Header.SetMethod("POST")
	req.SetRequestURI("http://" + front + "/v1/chat/completions")
	req.SetBodyString(`{"model":"m"}`)
	if err := fasthttp.Do(req, resp); err != nil {
		t.Fatal(err)
	}
	if got := string(resp.Body()); resp.StatusCode() != 200 || got != `{"path":"/v1/chat/completions"}` {
		t.Fatalf("%d %s", resp.StatusCode(), got)
	}
}

// TestIdleConnectionClosedBeforeTheUpstreamDoes: a request after a pause longer than the
// upstream's keep-alive gets a fresh connection, not the one the upstream closed (a 502).
func TestIdleConnectionClosedBeforeTheUpstreamDoes(t *testing.T) {
	closed := make(chan struct{}, 16)
	backend := serveWith(t, &fasthttp.Server{
		Handler:     func(ctx *fasthttp.RequestCtx) { ctx.SetBodyString(`{"ok":true}`) },
		IdleTimeout: 300 * time.Millisecond,
		ConnState: func(_ net.Conn, st fasthttp.ConnState) {
			if st == fasthttp.StateClosed {
				closed <- struct{}{}
			}
		},
	})
	front := serve(t, handler(backend, 100*time.Millisecond))
	post := func() (int, string) {
		req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
		defer fasthttp.ReleaseRequest(req)
		defer fasthttp.ReleaseResponse(resp)
		req.Header.SetMethod("POST")
		req.SetRequestURI("http://" + front + "/v1/chat/completions")
		req.SetBodyString(`{"model":"m"}`)
		if err := fasthttp.Do(req, resp); err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode(), string(resp.Body())
	}
	for i := range 3 {
		if status, body := post(); status != 200 {
			t.Fatalf("request %d: %d %s", i, status, body)
		}
		select { // the pooled connection to the backend is gone (by either side)
		case <-closed:
		case <-time.After(10 * time.Second):
			t.Fatal("the idle connection to the backend was never closed")
		}
	}
}
