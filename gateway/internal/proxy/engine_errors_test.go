package proxy

import (
	"bytes"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/sony/gobreaker/v2"
	"github.com/valyala/fasthttp"

	"github.com/maas-platform/maas/gateway/internal/upstream"
)

// failingEngine answers "fail-NNN" in a request's message with status NNN and an
// OpenAI-shaped body as vLLM writes it (type BadRequestError for a 4xx or for a 500 that
// blames the request: "fail-500-request"; InternalServerError otherwise), a 429 with
// Retry-After; any other request is served by ok.
func failingEngine(ok func(w http.ResponseWriter, body []byte)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		i := bytes.Index(body, []byte("fail-"))
		if i < 0 {
			ok(w, body)
			return
		}
		status := 0
		for _, c := range body[i+5 : i+8] {
			status = status*10 + int(c-'0')
		}
		typ := "BadRequestError"
		if status >= 500 && !bytes.HasPrefix(body[i+8:], []byte("-request")) {
			typ = "InternalServerError"
		}
		w.Header().Set("Content-Type", "application/json")
		if status == 429 {
			w.Header().Set("Retry-After", "7")
		}
		w.WriteHeader(status)
		io.WriteString(w, engineErrorBody(status, typ))
	}
}

func engineErrorBody(status int, typ string) string {
	return `{"error":{"message":"engine says ` + itoa(status) + `","type":"` + typ + `","param":null,"code":` + itoa(status) + `}}`
}

func streamBody(stream bool, content string) string {
	return `{"model":"m","messages":[{"role":"user","content":"` + content + `"}],"max_tokens":4,"stream":` + map[bool]string{false: "false", true: "true"}[stream] + `}`
}

func (r *rig) postFull(t *testing.T, body string) (int, http.Header, []byte) {
	t.Helper()
	req, _ := http.NewRequest("POST", r.url+"/v1/chat/completions", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+testKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, b
}

// TestEngineErrorsAreRelayedAlikeStreamedOrNot: an engine's refusal reaches the client
// as the engine wrote it (status, body, Content-Type, a 429's Retry-After), streamed or
// not; only 502/503/504 become the gateway's own error.
func TestEngineErrorsAreRelayedAlikeStreamedOrNot(t *testing.T) {
	r := newRigWith(t, func(po *upstream.Options, o *Options) {
		po.BreakerFailures = 1000 // the 500, 502, 503 and 504 cases are failures of the backend
		o.AccessLog = false
	}, failingEngine(unary))
	for _, stream := range []bool{false, true} {
		for _, status := range []int{400, 401, 404, 422, 429, 500, 502, 503, 504} {
			name := itoa(status) + map[bool]string{false: "/unary", true: "/stream"}[stream]
			t.Run(name, func(t *testing.T) {
				st, hdr, b := r.postFull(t, streamBody(stream, "fail-"+itoa(status)))
				if st != status {
					t.Fatalf("status %d, want %d: %s", st, status, b)
				}
				var env struct {
					Error struct {
						Type string `json:"type"`
					} `json:"error"`
				}
				if err := json.Unmarshal(b, &env); err != nil {
					t.Fatalf("body is not JSON: %s", b)
				}
				switch status {
				case 502, 503, 504: // the gateway's own error
					want := map[int]string{502: "bad_gateway", 503: "service_unavailable", 504: "timeout_error"}[status]
					if env.Error.Type != want {
						t.Errorf("error type %q, want the gateway's %q: %s", env.Error.Type, want, b)
					}
				default:
					typ := "BadRequestError"
					if status == 500 {
						typ = "InternalServerError"
					}
					if want := engineErrorBody(status, typ); string(b) != want {
						t.Errorf("body\n%s\nwant the engine's\n%s", b, want)
					}
					if ct := hdr.Get("Content-Type"); ct != "application/json" {
						t.Errorf("Content-Type %q", ct)
					}
				}
				if ra := hdr.Get("Retry-After"); (status == 429) != (ra == "7") {
					t.Errorf("Retry-After %q", ra)
				}
			})
		}
	}
	for _, rec := range r.rec.wait(t, 18) {
		if rec.Status < 400 {
			t.Errorf("record %+v", rec)
		}
	}
}

// TestClientCannotOpenTheBreaker: 100 requests the engine refuses (4xx, and 500s whose
// body blames the request), streamed and not, leave the breaker closed and the next good
// request is served; three bare 500s in a row do open it.
func TestClientCannotOpenTheBreaker(t *testing.T) {
	r := newRigWith(t, func(_ *upstream.Options, o *Options) { o.AccessLog = false }, failingEngine(func(w http.ResponseWriter, body []byte) {
		if bytes.Contains(body, []byte(`"stream":true`)) {
			streamer(2)(w, body)
			return
		}
		unary(w, body)
	}))
	bad := []string{"fail-400", "fail-401", "fail-404", "fail-422", "fail-429", "fail-500-request"}
	for i := range 100 {
		st, b := r.post(t, streamBody(i%2 == 1, bad[i%len(bad)]))
		if st < 400 || st >= 502 {
			t.Fatalf("request %d: status %d: %s", i, st, b)
		}
	}
	if s := r.pool.Get("b0").BreakerState(); s != gobreaker.StateClosed {
		t.Fatalf("breaker %v after 100 refused requests", s)
	}
	for _, stream := range []bool{false, true} {
		if st, b := r.post(t, streamBody(stream, "hello")); st != 200 {
			t.Fatalf("good request (stream %v) after 100 refused ones: status %d: %s", stream, st, b)
		}
	}
	for range 3 {
		if st, _ := r.post(t, streamBody(false, "fail-500")); st != 500 {
			t.Fatalf("bare 500: status %d", st)
		}
	}
	if s := r.pool.Get("b0").BreakerState(); s != gobreaker.StateOpen {
		t.Errorf("breaker %v after 3 bare 500s, want open", s)
	}
}

func TestBlamesRequest(t *testing.T) {
	for body, want := range map[string]bool{
		`{"error":{"message":"x","type":"invalid_request_error","param":null,"code":null}}`: true,
		`{"error":{"message":"x","type":"BadRequestError","param":null,"code":400}}`:        true,
		`{"object":"error","message":"x","type":"BadRequestError","param":null,"code":400}`: true,
		`{"error":{"message":"x","type":"InternalServerError","code":422}}`:                 true,
		`{"error":{"message":"x","type":"InternalServerError","param":null,"code":500}}`:    false,
		`{"error":"boom"}`:         false,
		`Internal Server Error`:    false,
		``:                         false,
		`{"detail":"Not Found"}`:   false,
		`{"type":"BadRequestErr"}`: false,
	} {
		if got := blamesRequest([]byte(body)); got != want {
			t.Errorf("blamesRequest(%s) = %v, want %v", body, got, want)
		}
	}
}

// restartable is an engine on a fixed address that can be restarted: stopping it closes
// every connection (the idle ones in the gateway's pool included), as an engine process
// that exits does.
type restartable struct {
	t    *testing.T
	addr string
	h    http.Handler
	mu   sync.Mutex
	srv  *http.Server
}

func newRestartable(t *testing.T, h http.Handler) *restartable {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e := &restartable{t: t, addr: ln.Addr().String(), h: h}
	e.serve(ln)
	t.Cleanup(func() {
		e.mu.Lock()
		defer e.mu.Unlock()
		e.srv.Close()
	})
	return e
}

func (e *restartable) serve(ln net.Listener) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.srv = &http.Server{Handler: e.h}
	go e.srv.Serve(ln)
}

func (e *restartable) restart() {
	e.mu.Lock()
	e.srv.Close() // closes the listener and every connection, idle or not
	e.mu.Unlock()
	ln, err := net.Listen("tcp", e.addr)
	if err != nil {
		e.t.Fatal(err)
	}
	e.serve(ln)
}

// TestEngineRestartFailsNoRequest: after the only engine of a model restarted, every
// connection in the gateway's pool is closed; each request that takes one is sent again
// on a new connection, so none fails and the breaker stays closed.
func TestEngineRestartFailsNoRequest(t *testing.T) {
	for _, stream := range []bool{false, true} {
		t.Run(map[bool]string{false: "unary", true: "stream"}[stream], func(t *testing.T) {
			handle := unary
			if stream {
				handle = streamer(3)
			}
			e := newRestartable(t, &fakeBackend{handle: handle})
			r, _ := newURLRig(t, func(po *upstream.Options, o *Options) {
				o.FirstByteTimeout, o.StreamIdleTimeout = 5*time.Second, 5*time.Second
			}, "http://"+e.addr)
			body := streamBody(stream, "hello")
			const conc = 6
			burst := func(round int) {
				var wg sync.WaitGroup
				errs := make(chan string, conc)
				for range conc {
					wg.Go(func() {
						req, _ := http.NewRequest("POST", r.url, strings.NewReader(body))
						req.Header.Set("Authorization", "Bearer "+testKey)
						resp, err := http.DefaultClient.Do(req)
						if err != nil {
							errs <- err.Error()
							return
						}
						b, _ := io.ReadAll(resp.Body)
						resp.Body.Close()
						if resp.StatusCode != 200 || (stream && !bytes.HasSuffix(b, []byte("data: [DONE]\n\n"))) {
							errs <- itoa(resp.StatusCode) + " " + string(b)
						}
					})
				}
				wg.Wait()
				close(errs)
				for msg := range errs {
					t.Errorf("round %d: %s", round, msg)
				}
			}
			burst(0) // several pooled connections
			for round := 1; round <= 3; round++ {
				e.restart()
				burst(round)
			}
			if s := r.pool.Get("b0").BreakerState(); s != gobreaker.StateClosed {
				t.Errorf("breaker %v", s)
			}
		})
	}
}

// TestContinuousUsageIsStrippedUnlessAsked: with stream_options.continuous_usage_stats
// vLLM puts usage in every chunk once include_usage is set, which the gateway sets itself
// when the client did not: the client then sees no usage at all; a client that asked for
// usage gets every chunk unchanged. The ledger takes the final usage either way.
func TestContinuousUsageIsStrippedUnlessAsked(t *testing.T) {
	cont := func(w http.ResponseWriter, body []byte) {
		w.Header().Set("Content-Type", "text/event-stream")
		opts := member(body, "stream_options")
		usage := string(member(opts, "include_usage")) == "true"
		every := usage && string(member(opts, "continuous_usage_stats")) == "true"
		for i := range 3 {
			c := `{"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"t` + itoa(i) + `"},"finish_reason":null}]`
			if every {
				c += `,"usage":{"prompt_tokens":7,"total_tokens":` + itoa(8+i) + `,"completion_tokens":` + itoa(i+1) + `}`
			}
			io.WriteString(w, "data: "+c+"}\n\n")
		}
		if usage {
			io.WriteString(w, `data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[],"usage":{"prompt_tokens":7,"total_tokens":10,"completion_tokens":3}}`+"\n\n")
		}
		io.WriteString(w, "data: [DONE]\n\n")
	}
	for _, tc := range []struct {
		name, options string
		wantUsage     int // events with usage the client sees
	}{
		{"continuous only", `{"continuous_usage_stats":true}`, 0},
		{"include_usage false", `{"include_usage":false,"continuous_usage_stats":true}`, 0},
		{"asked", `{"include_usage":true,"continuous_usage_stats":true}`, 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRigWith(t, func(_ *upstream.Options, o *Options) { o.AccessLog = false }, &fakeBackend{handle: cont})
			st, b := r.post(t, `{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":`+tc.options+`}`)
			if st != 200 {
				t.Fatalf("status %d: %s", st, b)
			}
			evs := strings.Split(strings.TrimSuffix(string(b), "\n\n"), "\n\n")
			n, tokens := 0, 0
			for _, ev := range evs {
				data := strings.TrimPrefix(ev, "data: ")
				if data == "[DONE]" {
					continue
				}
				var c map[string]json.RawMessage
				if err := json.Unmarshal([]byte(data), &c); err != nil {
					t.Fatalf("event %q: %v", ev, err)
				}
				if _, ok := c["usage"]; ok {
					n++
				}
				if bytes.Contains(c["choices"], []byte(`"content"`)) {
					tokens++
				}
			}
			if n != tc.wantUsage || tokens != 3 {
				t.Errorf("client saw %d events with usage (want %d) and %d token events:\n%s", n, tc.wantUsage, tokens, b)
			}
			if rec := r.rec.wait(t, 1)[0]; rec.PromptTokens != 7 || rec.CompletionTokens != 3 || rec.Estimated {
				t.Errorf("record %+v", rec)
			}
		})
	}
}

func TestAppendWithout(t *testing.T) {
	for in, want := range map[string]string{
		`{"a":1,"usage":{"x":[1,{"y":2}]}}`:       `{"a":1}`,
		`{"usage":{"x":1},"a":1}`:                 `{"a":1}`,
		`{"a":1, "usage" : {"x":1} ,"b":"usage"}`: `{"a":1 ,"b":"usage"}`,
		`{"a":1}`:        `{"a":1}`,
		`{"usage":null}`: `{}`,
	} {
		if got := string(appendWithout(nil, []byte(in), "usage")); got != want {
			t.Errorf("appendWithout(%s) = %s, want %s", in, got, want)
		}
	}
}

// TestIdleConnectionsClosedBeforeTheEngineDoes: an engine closes keep-alive connections
// idle 150 ms (vLLM: 5 s). With the gateway's idle timeout below it, the gateway closes
// them first and no request meets a closed connection; with it above, each request after
// a quiet spell meets one and is sent again on a new connection — none fails either way.
func TestIdleConnectionsClosedBeforeTheEngineDoes(t *testing.T) {
	engine := &fasthttp.Server{IdleTimeout: 150 * time.Millisecond, Handler: func(ctx *fasthttp.RequestCtx) {
		if len(member(ctx.PostBody(), "stream")) == 4 {
			ctx.SetContentType("text/event-stream")
			ctx.SetBodyString("data: " + chunk("a") + "\n\ndata: [DONE]\n\n")
			return
		}
		ctx.SetContentType("application/json")
		ctx.SetBodyString(unaryAnswer)
	}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go engine.Serve(ln)
	t.Cleanup(func() { engine.Shutdown() })
	for _, tc := range []struct {
		idle      time.Duration
		wantStale bool
	}{{40 * time.Millisecond, false}, {time.Minute, true}} {
		t.Run(tc.idle.String(), func(t *testing.T) {
			r, h := newURLRig(t, func(po *upstream.Options, o *Options) {
				po.IdleTimeout = tc.idle
				o.FirstByteTimeout, o.StreamIdleTimeout = 5*time.Second, 5*time.Second
			}, "http://"+ln.Addr().String())
			if got := r.pool.Get("b0").Client.MaxIdleConnDuration; got != tc.idle {
				t.Fatalf("MaxIdleConnDuration %v, want %v", got, tc.idle)
			}
			for i := range 6 {
				if i > 0 {
					time.Sleep(250 * time.Millisecond) // a quiet spell: the stimulus, not a wait
				}
				if st, b := r.post(t, streamBody(i%2 == 1, "hello")); st != 200 {
					t.Fatalf("request %d: status %d: %s", i, st, b)
				}
			}
			stale := testutil.ToFloat64(h.m.upstreamErr.WithLabelValues("b0", "stale"))
			if (stale > 0) != tc.wantStale {
				t.Errorf("%v requests met a connection the engine had closed (want some: %v)", stale, tc.wantStale)
			}
		})
	}
}
