package server

import (
	"net"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttputil"

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
