package server

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttputil"

	"github.com/maas-platform/maas/gateway/internal/admit"
	"github.com/maas-platform/maas/gateway/internal/ledger"
	"github.com/maas-platform/maas/gateway/internal/proxy"
	"github.com/maas-platform/maas/gateway/internal/snapshot"
	"github.com/maas-platform/maas/gateway/internal/upstream"
	"github.com/maas-platform/maas/pkg/apikey"
	"github.com/maas-platform/maas/pkg/linger"
)

const benchKey = "sk-benchbenchbenchbenchbenchbenchbenchbench00"

type fixedSnapshots struct{ s *snapshot.Snapshot }

func (f fixedSnapshots) Current() *snapshot.Snapshot { return f.s }

// benchGateway serves the gateway's real fasthttp.Server (New: its routes and settings) on
// an in-memory listener, in front of an in-memory engine, and returns a client for it.
func benchGateway(b testing.TB) *fasthttp.HostClient {
	c, _ := serveGateway(b)
	return c
}

// serveGateway is benchGateway, also returning the address of a real TCP listener
// (wrapped by linger.Listen, as Run does) serving the same server.
func serveGateway(b testing.TB) (*fasthttp.HostClient, string) {
	engineLn := fasthttputil.NewInmemoryListener()
	engine := &fasthttp.Server{Handler: func(ctx *fasthttp.RequestCtx) {
		ctx.SetContentType("application/json")
		ctx.SetBodyString(`{"id":"c1","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":7,"completion_tokens":1,"total_tokens":8}}`)
	}}
	go engine.Serve(engineLn)
	b.Cleanup(func() { engineLn.Close() })

	now := time.Now()
	sb := snapshot.NewBuilder(now)
	sb.AddUser(&snapshot.User{ID: 1, Username: "u", Active: true})
	sb.AddKey(apikey.Sum([]byte(benchKey)), &snapshot.Key{ID: 10, UserID: 1})
	sb.AddBackend(snapshot.Backend{ID: "b0", URL: "http://engine", Models: []string{"m"}, Capacity: 1 << 20, Weight: 100,
		State: "healthy", HeartbeatInterval: time.Hour, Load: snapshot.Load{ID: "b0", State: "healthy", ReadAt: now}})
	snap := sb.Build()
	pool, err := upstream.New(upstream.DefaultOptions())
	if err != nil {
		b.Fatal(err)
	}
	pool.Sync(snap)
	pool.Get("b0").Client.Dial = func(string) (net.Conn, error) { return engineLn.Dial() }
	po := proxy.DefaultOptions()
	po.Snapshots, po.Pool, po.AccessLog = fixedSnapshots{snap}, pool, false
	ph, err := proxy.New(po)
	if err != nil {
		b.Fatal(err)
	}
	o := DefaultOptions()
	srv := New(o, Deps{Proxy: ph, Store: nil, Registry: prometheus.NewRegistry()})
	ln := fasthttputil.NewInmemoryListener()
	go srv.Serve(ln)
	b.Cleanup(func() { ln.Close() })
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go srv.Serve(linger.Listen(tcp))
	b.Cleanup(func() { tcp.Close() })
	return &fasthttp.HostClient{Addr: "gateway", Dial: func(string) (net.Conn, error) { return ln.Dial() }}, tcp.Addr().String()
}

// BenchmarkServeChatUnary is a non-streamed chat completion through the whole server
// (reading the request from the connection included), client and engine costs counted.
func BenchmarkServeChatUnary(b *testing.B) {
	for _, size := range []int{100, 16 << 10} {
		b.Run(map[int]string{100: "small", 16 << 10: "16KiB"}[size], func(b *testing.B) {
			c := benchGateway(b)
			content := strings.Repeat("a", size)
			body := []byte(`{"model":"m","messages":[{"role":"user","content":"` + content + `"}],"max_tokens":16}`)
			req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
			b.ReportAllocs()
			for b.Loop() {
				req.Reset()
				req.SetRequestURI("http://gateway/v1/chat/completions")
				req.Header.SetMethod("POST")
				req.Header.Set("Authorization", "Bearer "+benchKey)
				req.Header.SetContentType("application/json")
				req.SetBody(body)
				if err := c.Do(req, resp); err != nil {
					b.Fatal(err)
				}
				if resp.StatusCode() != 200 {
					b.Fatalf("status %d: %s", resp.StatusCode(), resp.Body())
				}
			}
		})
	}
}

// benchRecorder takes usage records as the ledger's intake does: appended under a lock to
// a slice reused once a batch is taken (the writer's PostgreSQL side is not measured here).
type benchRecorder struct {
	mu   sync.Mutex
	recs []ledger.Record
}

func (r *benchRecorder) Add(rec ledger.Record) {
	r.mu.Lock()
	if len(r.recs) == cap(r.recs) {
		r.recs = r.recs[:0]
	}
	r.recs = append(r.recs, rec)
	r.mu.Unlock()
}

// fullHandler is the gateway's whole request handler (New's router and panic recovery in
// front of the proxy) with every per-request feature of `make run` on: the local quota
// tier with RPM and TPM limits on the key and the user, usage records, metrics
// registered, the access log (logfmt, buffered as Run does, into io.Discard). Its only
// backend is an in-memory engine answering unaryAnswer, or 64 chunks to a stream.
func fullHandler(b testing.TB) fasthttp.RequestHandler {
	engineLn := fasthttputil.NewInmemoryListener()
	var chunks []byte
	for i := range 64 {
		chunks = append(chunks, `data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"t`+strconv.Itoa(i)+`"},"finish_reason":null}]}`+"\n\n"...)
	}
	chunks = append(chunks, `data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[],"usage":{"prompt_tokens":40,"completion_tokens":64,"total_tokens":104}}`+"\n\ndata: [DONE]\n\n"...)
	engine := &fasthttp.Server{Handler: func(ctx *fasthttp.RequestCtx) {
		if bytes.Contains(ctx.PostBody(), []byte(`"stream":true`)) {
			ctx.SetContentType("text/event-stream")
			ctx.SetBody(chunks)
			return
		}
		ctx.SetContentType("application/json")
		ctx.SetBodyString(`{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"Paris is the capital of France, known for the Eiffel Tower."},"finish_reason":"stop"}],"usage":{"prompt_tokens":40,"completion_tokens":16,"total_tokens":56}}`)
	}}
	go engine.Serve(engineLn)
	b.Cleanup(func() { engineLn.Close() })

	now := time.Now()
	sb := snapshot.NewBuilder(now)
	sb.AddUser(&snapshot.User{ID: 1, Username: "u", Active: true,
		Quota: snapshot.Quota{RequestsPerMinute: 1 << 30, TokensPerMinute: 1 << 30}})
	sb.AddKey(apikey.Sum([]byte(benchKey)), &snapshot.Key{ID: 10, UserID: 1, RequestsPerMinute: 1 << 30, TokensPerMinute: 1 << 30})
	sb.AddBackend(snapshot.Backend{ID: "b0", URL: "http://engine", Models: []string{"m"}, Capacity: 1 << 20, Weight: 100,
		State: "healthy", HeartbeatInterval: time.Hour, Load: snapshot.Load{ID: "b0", State: "healthy", ReadAt: now}})
	snap := sb.Build()
	pool, err := upstream.New(upstream.DefaultOptions())
	if err != nil {
		b.Fatal(err)
	}
	pool.Sync(snap)
	pool.Get("b0").Client.Dial = func(string) (net.Conn, error) { return engineLn.Dial() }
	pool.Get("b0").Stream.Dial = func(string) (net.Conn, error) { return engineLn.Dial() }
	reg := prometheus.NewRegistry()
	ao := admit.DefaultOptions()
	ao.Registerer = reg
	limiter, err := admit.New(ao)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = limiter.Close() })
	out := newBufferedOut(io.Discard, 100*time.Millisecond)
	b.Cleanup(out.Close)
	po := proxy.DefaultOptions()
	po.Snapshots, po.Pool, po.Quota, po.Ledger = fixedSnapshots{snap}, pool, quota{limiter}, &benchRecorder{recs: make([]ledger.Record, 0, 512)}
	po.AccessLog, po.AccessLogOut, po.Registerer = true, out, reg
	ph, err := proxy.New(po)
	if err != nil {
		b.Fatal(err)
	}
	return New(DefaultOptions(), Deps{Proxy: ph, Registry: reg}).Handler
}

// benchChatBody is a chat request as SDKs send it: a system prompt, a short exchange,
// sampling settings, an output limit (about 600 bytes).
const benchChatBody = `{"model":"m","messages":[{"role":"system","content":"You are a helpful assistant. Answer briefly and precisely; when unsure, say so."},` +
	`{"role":"user","content":"What is the capital of France?"},{"role":"assistant","content":"The capital of France is Paris."},` +
	`{"role":"user","content":"And what is it known for? Give me two or three things, with a sentence on each, please."}],` +
	`"temperature":0.7,"top_p":0.95,"max_tokens":%d,"user":"user-1234","seed":42,"stream_options":null,"n":1%s}`

// BenchmarkHandlerChat is one chat completion through the gateway's whole handler (no
// connection I/O: the request is handed to the handler as fasthttp's server would), with
// every per-request feature on (fullHandler). allocs/op is the gateway's path plus the
// in-memory engine's, which costs none in steady state.
func BenchmarkHandlerChat(b *testing.B) {
	for _, bc := range []struct {
		name, body string
	}{
		{"unary", fmt.Sprintf(benchChatBody, 16, "")},
		{"stream64", fmt.Sprintf(benchChatBody, 64, `,"stream":true`)},
	} {
		b.Run(bc.name, func(b *testing.B) {
			h := fullHandler(b)
			var ctx fasthttp.RequestCtx
			b.ReportAllocs()
			for b.Loop() {
				handleChat(b, h, &ctx, bc.body)
			}
		})
	}
}

// handleChat hands one chat request with body to h, as fasthttp's server would, and
// reads the whole answer.
func handleChat(tb testing.TB, h fasthttp.RequestHandler, ctx *fasthttp.RequestCtx, body string) {
	ctx.Request.Reset()
	ctx.Response.Reset()
	ctx.Request.Header.SetMethod("POST")
	ctx.Request.SetRequestURI("/v1/chat/completions")
	ctx.Request.Header.Set("Authorization", "Bearer "+benchKey)
	ctx.Request.Header.SetContentType("application/json")
	ctx.Request.Header.Set("User-Agent", "OpenAI/Python 1.54.0")
	ctx.Request.SetBodyString(body)
	ctx.ResetUserValues()
	h(ctx)
	if ctx.Response.StatusCode() != 200 {
		tb.Fatalf("status %d: %s", ctx.Response.StatusCode(), ctx.Response.Body())
	}
	if err := ctx.Response.BodyWriteTo(io.Discard); err != nil {
		tb.Fatal(err)
	}
}
