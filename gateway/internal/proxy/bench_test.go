package proxy

import (
	"context"
	"io"
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttputil"

	"github.com/maas-platform/maas/gateway/internal/ledger"
	"github.com/maas-platform/maas/gateway/internal/snapshot"
	"github.com/maas-platform/maas/gateway/internal/upstream"
	"github.com/maas-platform/maas/pkg/apikey"
)

type discard struct{}

func (discard) Add(ledger.Record) {}

// benchHandler returns a Handler whose only backend is an in-memory fasthttp engine that
// answers unary requests with unaryAnswer and streams 64 chunks.
func benchHandler(b *testing.B) *Handler {
	ln := fasthttputil.NewInmemoryListener()
	var chunks []byte
	for i := range 64 {
		chunks = append(chunks, "data: "+chunk("t"+itoa(i))+"\n\n"...)
	}
	chunks = append(chunks, `data: {"id":"c1","object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":7,"completion_tokens":64}}`+"\n\ndata: [DONE]\n\n"...)
	engine := &fasthttp.Server{Handler: func(ctx *fasthttp.RequestCtx) {
		if len(member(ctx.PostBody(), "stream")) == 4 {
			ctx.SetContentType("text/event-stream")
			ctx.SetBody(chunks)
			return
		}
		ctx.SetContentType("application/json")
		ctx.SetBodyString(unaryAnswer)
	}}
	go engine.Serve(ln)
	b.Cleanup(func() { ln.Close() })

	now := time.Now()
	sb := snapshot.NewBuilder(now)
	sb.AddUser(&snapshot.User{ID: 1, Username: "u", Active: true})
	sb.AddKey(apikey.Sum([]byte(testKey)), &snapshot.Key{ID: 10, UserID: 1})
	sb.AddBackend(snapshot.Backend{ID: "b0", URL: "http://engine", Models: []string{"m"}, Capacity: 1 << 20, Weight: 100,
		State: "healthy", HeartbeatInterval: time.Hour, Load: snapshot.Load{ID: "b0", State: "healthy", ReadAt: now}})
	snap := sb.Build()
	pool, _ := upstream.New(upstream.DefaultOptions())
	pool.Sync(snap)
	pool.Get("b0").Client.Dial = func(string) (net.Conn, error) { return ln.Dial() }
	pool.Get("b0").Stream.Dial = func(string) (net.Conn, error) { return ln.Dial() }
	o := DefaultOptions()
	o.Snapshots, o.Pool, o.Ledger = fakeSnapshots{snap}, pool, discard{}
	o.AccessLog = false
	h, err := New(o)
	if err != nil {
		b.Fatal(err)
	}
	return h
}

func benchRequest(ctx *fasthttp.RequestCtx, body string) {
	ctx.Request.Reset()
	ctx.Response.Reset()
	ctx.Request.Header.SetMethod("POST")
	ctx.Request.SetRequestURI("/v1/chat/completions")
	ctx.Request.Header.Set("Authorization", "Bearer "+testKey)
	ctx.Request.Header.SetContentType("application/json")
	ctx.Request.SetBodyString(body)
	ctx.ResetUserValues()
}

func BenchmarkChatCompletionsUnary(b *testing.B) {
	h := benchHandler(b)
	var ctx fasthttp.RequestCtx
	body := `{"model":"m","messages":[{"role":"user","content":"Hello there, how are you today?"}],"max_tokens":16}`
	b.ReportAllocs()
	for b.Loop() {
		benchRequest(&ctx, body)
		h.ChatCompletions(&ctx)
		if ctx.Response.StatusCode() != 200 {
			b.Fatalf("status %d: %s", ctx.Response.StatusCode(), ctx.Response.Body())
		}
	}
}

func BenchmarkChatCompletionsStream64(b *testing.B) {
	h := benchHandler(b)
	var ctx fasthttp.RequestCtx
	body := `{"model":"m","messages":[{"role":"user","content":"Hello there, how are you today?"}],"max_tokens":64,"stream":true}`
	b.ReportAllocs()
	for b.Loop() {
		benchRequest(&ctx, body)
		h.ChatCompletions(&ctx)
		if ctx.Response.StatusCode() != 200 {
			b.Fatalf("status %d: %s", ctx.Response.StatusCode(), ctx.Response.Body())
		}
		if err := ctx.Response.BodyWriteTo(io.Discard); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkClientWatch is what watching a client costs a non-streamed request that waits
// longer than watchAfter: the goroutine, its wait in the runtime poller on a real TCP
// connection, and the wake-up at the end (requests answered sooner cost nothing).
func BenchmarkClientWatch(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			defer c.Close()
			_, _ = io.Copy(io.Discard, c)
		}
	}()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	defer client.Close()
	var ctx fasthttp.RequestCtx
	ctx.Init2(client, nil, false)
	var g backendGuard
	w := newClientWatch(&g, context.Background())
	b.ReportAllocs()
	for b.Loop() {
		w.mu.Lock()
		w.ctx, w.state = &ctx, watchArmed
		w.mu.Unlock()
		go w.fire() // as the timer would, after watchAfter
		for {
			w.mu.Lock()
			s := w.state
			w.mu.Unlock()
			if s == watchWatching {
				break
			}
			runtime.Gosched()
		}
		w.disarm()
	}
}
