package proxy

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/valyala/fasthttp"

	"github.com/maas-platform/maas/gateway/internal/ledger"
	"github.com/maas-platform/maas/gateway/internal/snapshot"
	"github.com/maas-platform/maas/gateway/internal/upstream"
	"github.com/maas-platform/maas/pkg/apikey"
)

const testKey = "sk-0123456789abcdefghijklmnopqrstuvwxyzABCDEFG"

type fakeSnapshots struct{ s *snapshot.Snapshot }

func (f fakeSnapshots) Current() *snapshot.Snapshot { return f.s }

type recorder struct {
	mu   sync.Mutex
	recs []ledger.Record
}

func (r *recorder) Add(rec ledger.Record) {
	r.mu.Lock()
	r.recs = append(r.recs, rec)
	r.mu.Unlock()
}

func (r *recorder) wait(t *testing.T, n int) []ledger.Record {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		r.mu.Lock()
		got := append([]ledger.Record(nil), r.recs...)
		r.mu.Unlock()
		if len(got) >= n {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d usage records, want %d", len(got), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// fakeBackend answers like an engine; what it does depends on the request.
type fakeBackend struct {
	mu     sync.Mutex
	bodies [][]byte
	status int // non-zero: answer this status
	handle func(w http.ResponseWriter, body []byte)
}

func (f *fakeBackend) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	f.mu.Lock()
	f.bodies = append(f.bodies, body)
	f.mu.Unlock()
	if f.status != 0 {
		w.WriteHeader(f.status)
		io.WriteString(w, `{"error":{"message":"backend says no","type":"x"}}`)
		return
	}
	f.handle(w, body)
}

func (f *fakeBackend) last() []byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.bodies[len(f.bodies)-1]
}

const unaryAnswer = `{"id":"c1","object":"chat.completion","created":1,"model":"m","system_fingerprint":"fp","vendor_x":{"a":[1,2]},"choices":[{"index":0,"message":{"role":"assistant","content":"hi there"},"finish_reason":"stop"}],"usage":{"prompt_tokens":7,"completion_tokens":2,"total_tokens":9}}`

func unary(w http.ResponseWriter, body []byte) {
	w.Header().Set("Content-Type", "application/json")
	io.WriteString(w, unaryAnswer)
}

func chunk(content string) string {
	return `{"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"` + content + `"}}]}`
}

// streamer sends n token chunks, then the usage chunk when asked, then [DONE].
func streamer(n int) func(w http.ResponseWriter, body []byte) {
	return func(w http.ResponseWriter, body []byte) {
		w.Header().Set("Content-Type", "text/event-stream")
		fl := w.(http.Flusher)
		for i := range n {
			io.WriteString(w, "data: "+chunk("t"+itoa(i))+"\n\n")
			fl.Flush()
		}
		if string(member(member(body, "stream_options"), "include_usage")) == "true" {
			io.WriteString(w, `data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[],"usage":{"prompt_tokens":7,"completion_tokens":`+itoa(n)+`,"total_tokens":9}}`+"\n\n")
		}
		io.WriteString(w, "data: [DONE]\n\n")
	}
}

type rig struct {
	url  string
	rec  *recorder
	pool *upstream.Pool
}

// newRig serves a Handler on loopback in front of the given backends (ids b0, b1, …).
func newRig(t *testing.T, backends ...http.Handler) *rig {
	return newRigWith(t, nil, backends...)
}

// newRigWith is newRig with options adjusted by tweak.
func newRigWith(t *testing.T, tweak func(*upstream.Options, *Options), backends ...http.Handler) *rig {
	t.Helper()
	now := time.Now()
	b := snapshot.NewBuilder(now)
	b.AddUser(&snapshot.User{ID: 1, Username: "u", Active: true, Roles: []string{"user"}})
	b.AddKey(apikey.Sum([]byte(testKey)), &snapshot.Key{ID: 10, UserID: 1})
	for i, h := range backends {
		srv := httptest.NewServer(h)
		t.Cleanup(srv.Close)
		b.AddBackend(snapshot.Backend{ID: "b" + itoa(i), URL: srv.URL, Models: []string{"m"}, Capacity: 100, Weight: 100,
			State: "healthy", HeartbeatInterval: time.Hour, Load: snapshot.Load{ID: "b" + itoa(i), State: "healthy", ReadAt: now}})
	}
	snap := b.Build()
	po := upstream.DefaultOptions()
	o := DefaultOptions()
	o.FirstByteTimeout, o.StreamIdleTimeout = 2*time.Second, 2*time.Second
	if tweak != nil {
		tweak(&po, &o)
	}
	pool, err := upstream.New(po)
	if err != nil {
		t.Fatal(err)
	}
	pool.Sync(snap)
	rec := &recorder{}
	o.Snapshots, o.Pool, o.Ledger = fakeSnapshots{snap}, pool, rec
	h, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	srv := &fasthttp.Server{Handler: func(ctx *fasthttp.RequestCtx) {
		switch string(ctx.Path()) {
		case "/v1/chat/completions":
			h.ChatCompletions(ctx)
		case "/v1/embeddings":
			h.Embeddings(ctx)
		case "/v1/models":
			h.Models(ctx)
		}
	}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Shutdown() })
	return &rig{url: "http://" + ln.Addr().String(), rec: rec, pool: pool}
}

func (r *rig) post(t *testing.T, body string) (int, []byte) {
	t.Helper()
	req, _ := http.NewRequest("POST", r.url+"/v1/chat/completions", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+testKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

const richBody = `{"model":"m","messages":[{"role":"user","content":"hello"}],"tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object"}}}],"response_format":{"type":"json_object"},"seed":42,"logit_bias":{"50256":-100},"top_k":5,"chat_template_kwargs":{"enable_thinking":false},"max_tokens":16}`

func TestUnaryPassesBodiesUnchanged(t *testing.T) {
	be := &fakeBackend{handle: unary}
	r := newRig(t, be)
	st, body := r.post(t, richBody)
	if st != 200 {
		t.Fatalf("status %d: %s", st, body)
	}
	if got := string(be.last()); got != richBody {
		t.Errorf("backend received\n%s\nwant\n%s", got, richBody)
	}
	if string(body) != unaryAnswer {
		t.Errorf("client received\n%s\nwant\n%s", body, unaryAnswer)
	}
	rec := r.rec.wait(t, 1)[0]
	if rec.PromptTokens != 7 || rec.CompletionTokens != 2 || rec.Estimated || rec.Status != 200 || rec.Backend != "b0" || rec.KeyID != 10 || rec.UserID != 1 {
		t.Errorf("record %+v", rec)
	}
}

func TestStreamUsageInjection(t *testing.T) {
	tests := []struct {
		name       string
		options    string // stream_options member, or ""
		wantSent   string // stream_options the backend must receive
		wantClient bool   // whether the client sees the usage chunk
	}{
		{"absent", "", `{"include_usage":true}`, false},
		{"false with other fields", `,"stream_options":{"include_usage":false,"continuous_usage_stats":true}`, `{"include_usage":true,"continuous_usage_stats":true}`, false},
		{"null", `,"stream_options":null`, `{"include_usage":true}`, false},
		{"asked by the client", `,"stream_options":{"include_usage":true}`, `{"include_usage":true}`, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			be := &fakeBackend{handle: streamer(5)}
			r := newRig(t, be)
			reqBody := strings.Replace(richBody, `"max_tokens":16`, `"max_tokens":16,"stream":true`+tc.options, 1)
			st, body := r.post(t, reqBody)
			if st != 200 {
				t.Fatalf("status %d: %s", st, body)
			}
			// The backend got the client's body, with only stream_options changed.
			var sent, orig map[string]json.RawMessage
			if err := json.Unmarshal(be.last(), &sent); err != nil {
				t.Fatalf("backend got invalid JSON %s: %v", be.last(), err)
			}
			_ = json.Unmarshal([]byte(reqBody), &orig)
			if got := string(sent["stream_options"]); got != tc.wantSent {
				t.Errorf("stream_options sent %s, want %s", got, tc.wantSent)
			}
			delete(sent, "stream_options")
			delete(orig, "stream_options")
			if diff := cmp.Diff(orig, sent); diff != "" {
				t.Errorf("other fields changed (-client +backend):\n%s", diff)
			}
			// The client's stream.
			evs := strings.Split(strings.TrimSuffix(string(body), "\n\n"), "\n\n")
			if evs[len(evs)-1] != "data: [DONE]" {
				t.Errorf("last event %q", evs[len(evs)-1])
			}
			sawUsage := strings.Contains(string(body), `"usage"`)
			if sawUsage != tc.wantClient {
				t.Errorf("client saw usage chunk: %v, want %v\n%s", sawUsage, tc.wantClient, body)
			}
			if want := 5 + 1 + b2i(tc.wantClient); len(evs) != want {
				t.Errorf("%d events, want %d", len(evs), want)
			}
			rec := r.rec.wait(t, 1)[0]
			if rec.PromptTokens != 7 || rec.CompletionTokens != 5 || rec.Estimated || !rec.Streamed || rec.Status != 200 || rec.TTFT <= 0 {
				t.Errorf("record %+v", rec)
			}
		})
	}
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

func TestFailoverBeforeFirstByte(t *testing.T) {
	for _, stream := range []bool{false, true} {
		name := "unary"
		handle := unary
		if stream {
			name, handle = "stream", streamer(3)
		}
		t.Run(name, func(t *testing.T) {
			bad := &fakeBackend{status: 503}
			good := &fakeBackend{handle: handle}
			r := newRig(t, bad, good)
			body := `{"model":"m","messages":[]}`
			if stream {
				body = `{"model":"m","messages":[],"stream":true}`
			}
			for range 10 {
				st, b := r.post(t, body)
				if st != 200 {
					t.Fatalf("status %d: %s", st, b)
				}
			}
			for _, rec := range r.rec.wait(t, 10) {
				if rec.Backend != "b1" || rec.Status != 200 {
					t.Errorf("record %+v", rec)
				}
			}
		})
	}
}

func TestStreamBreaksAfterFirstByte(t *testing.T) {
	be := &fakeBackend{handle: func(w http.ResponseWriter, body []byte) {
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, "data: "+chunk("a")+"\n\ndata: "+chunk("b")+"\n\n")
		w.(http.Flusher).Flush()
		conn, _, _ := w.(http.Hijacker).Hijack()
		conn.Close()
	}}
	r := newRig(t, be)
	st, body := r.post(t, `{"model":"m","messages":[{"role":"user","content":"12345678"}],"stream":true}`)
	if st != 200 {
		t.Fatalf("status %d", st)
	}
	evs := strings.Split(strings.TrimSuffix(string(body), "\n\n"), "\n\n")
	if len(evs) != 3 || !strings.HasPrefix(evs[2], `data: {"error":`) {
		t.Fatalf("events %q", evs)
	}
	rec := r.rec.wait(t, 1)[0]
	if rec.Status != 502 || rec.CompletionTokens != 2 || !rec.Estimated || rec.PromptTokens == 0 {
		t.Errorf("record %+v", rec)
	}
}

func TestNoUsageIsEstimated(t *testing.T) {
	be := &fakeBackend{handle: func(w http.ResponseWriter, body []byte) {
		io.WriteString(w, `{"id":"x","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"some words here"}}]}`)
	}}
	r := newRig(t, be)
	if st, b := r.post(t, `{"model":"m","messages":[{"role":"user","content":"hello hello"}]}`); st != 200 {
		t.Fatalf("status %d: %s", st, b)
	}
	rec := r.rec.wait(t, 1)[0]
	if !rec.Estimated || rec.PromptTokens == 0 || rec.CompletionTokens == 0 {
		t.Errorf("record %+v", rec)
	}
}

func TestBackendRefusalIsRelayed(t *testing.T) {
	be := &fakeBackend{status: 400}
	r := newRig(t, be)
	for _, body := range []string{`{"model":"m","messages":[]}`, `{"model":"m","messages":[],"stream":true}`} {
		st, b := r.post(t, body)
		if st != 400 || !bytes.Contains(b, []byte("backend says no")) {
			t.Errorf("status %d body %s", st, b)
		}
	}
	if n := len(be.bodies); n != 2 {
		t.Errorf("backend called %d times, want 2 (no retry on 400)", n)
	}
}

func TestStreamFramesPassThrough(t *testing.T) {
	// Comments and multi-line data are framed as SSE; CRLF input becomes LF.
	be := &fakeBackend{handle: func(w http.ResponseWriter, body []byte) {
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, ": ping\r\n\r\ndata: "+chunk("a")+"\r\n\r\ndata: [DONE]\r\n\r\n")
	}}
	r := newRig(t, be)
	_, body := r.post(t, `{"model":"m","messages":[],"stream":true,"stream_options":{"include_usage":true}}`)
	br := bufio.NewReader(bytes.NewReader(body))
	var lines []string
	for {
		l, err := br.ReadString('\n')
		if err != nil {
			break
		}
		lines = append(lines, l)
	}
	want := []string{": ping\r\n", "\r\n", "data: " + chunk("a") + "\n", "\n", "data: [DONE]\n", "\n"}
	if diff := cmp.Diff(want, lines); diff != "" {
		t.Errorf("stream (-want +got):\n%s", diff)
	}
}

func TestStreamTimeouts(t *testing.T) {
	fast := func(po *upstream.Options, o *Options) {
		po.StreamReadTimeout = 300 * time.Millisecond
		o.FirstByteTimeout, o.StreamIdleTimeout = 200*time.Millisecond, 200*time.Millisecond
	}
	t.Run("no headers: fail over", func(t *testing.T) {
		hang := &fakeBackend{handle: func(w http.ResponseWriter, body []byte) { time.Sleep(time.Second) }}
		good := &fakeBackend{handle: streamer(2)}
		r := newRigWith(t, fast, hang, good)
		for range 4 {
			start := time.Now()
			if st, b := r.post(t, `{"model":"m","messages":[],"stream":true}`); st != 200 {
				t.Fatalf("status %d: %s", st, b)
			}
			if d := time.Since(start); d > 1500*time.Millisecond {
				t.Errorf("took %v", d)
			}
		}
	})
	t.Run("no first event: fail over", func(t *testing.T) {
		silent := &fakeBackend{handle: func(w http.ResponseWriter, body []byte) {
			w.Header().Set("Content-Type", "text/event-stream")
			w.(http.Flusher).Flush()
			time.Sleep(time.Second)
		}}
		good := &fakeBackend{handle: streamer(2)}
		r := newRigWith(t, fast, silent, good)
		for range 4 {
			if st, b := r.post(t, `{"model":"m","messages":[],"stream":true}`); st != 200 {
				t.Fatalf("status %d: %s", st, b)
			}
		}
	})
	t.Run("events within the idle timeout keep a long stream alive", func(t *testing.T) {
		slow := &fakeBackend{handle: func(w http.ResponseWriter, body []byte) {
			w.Header().Set("Content-Type", "text/event-stream")
			for i := range 8 { // 8 gaps of 100 ms: longer than the 500 ms idle timeout in all
				io.WriteString(w, "data: "+chunk("t"+itoa(i))+"\n\n")
				w.(http.Flusher).Flush()
				time.Sleep(100 * time.Millisecond)
			}
			io.WriteString(w, "data: [DONE]\n\n")
		}}
		// The idle timeout is 5 gaps (a loaded test machine delays events by 100 ms and more).
		r := newRigWith(t, func(po *upstream.Options, o *Options) {
			po.StreamReadTimeout = time.Second
			o.FirstByteTimeout, o.StreamIdleTimeout = 500*time.Millisecond, 500*time.Millisecond
		}, slow)
		st, body := r.post(t, `{"model":"m","messages":[],"stream":true}`)
		if st != 200 || strings.Contains(string(body), `"error"`) || !strings.HasSuffix(string(body), "data: [DONE]\n\n") {
			t.Fatalf("status %d body %s", st, body)
		}
		if rec := r.rec.wait(t, 1)[0]; rec.Status != 200 || rec.CompletionTokens != 8 {
			t.Errorf("record %+v", rec)
		}
	})
	t.Run("idle after first event: error event", func(t *testing.T) {
		stall := &fakeBackend{handle: func(w http.ResponseWriter, body []byte) {
			w.Header().Set("Content-Type", "text/event-stream")
			io.WriteString(w, "data: "+chunk("a")+"\n\n")
			w.(http.Flusher).Flush()
			time.Sleep(time.Second)
		}}
		r := newRigWith(t, fast, stall)
		start := time.Now()
		st, body := r.post(t, `{"model":"m","messages":[],"stream":true}`)
		if st != 200 || !strings.Contains(string(body), `"type":"timeout_error"`) {
			t.Fatalf("status %d body %s", st, body)
		}
		if d := time.Since(start); d > time.Second {
			t.Errorf("idle timeout took %v", d)
		}
		if rec := r.rec.wait(t, 1)[0]; rec.Status != 504 || rec.CompletionTokens != 1 {
			t.Errorf("record %+v", rec)
		}
	})
}

func TestStreamRelaysEventsAsTheyArrive(t *testing.T) {
	// The backend sends one event and waits until the client has seen it: the gateway must
	// not hold an event back while waiting for the next one.
	seen := make(chan struct{})
	be := &fakeBackend{handle: func(w http.ResponseWriter, body []byte) {
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, "data: "+chunk("a")+"\n\n")
		w.(http.Flusher).Flush()
		select {
		case <-seen:
		case <-time.After(5 * time.Second):
		}
		io.WriteString(w, "data: "+chunk("b")+"\n\ndata: [DONE]\n\n")
	}}
	r := newRig(t, be)
	req, _ := http.NewRequest("POST", r.url+"/v1/chat/completions", strings.NewReader(`{"model":"m","messages":[],"stream":true}`))
	req.Header.Set("Authorization", "Bearer "+testKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	start := time.Now()
	line, err := br.ReadString('\n')
	if err != nil || line != "data: "+chunk("a")+"\n" {
		t.Fatalf("first line %q, %v", line, err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("first event took %v: held back until the next one", d)
	}
	close(seen)
	rest, _ := io.ReadAll(br)
	if want := "\ndata: " + chunk("b") + "\n\ndata: [DONE]\n\n"; string(rest) != want {
		t.Errorf("rest of the stream %q, want %q", rest, want)
	}
}

func TestStreamBurstIsRelayedWhole(t *testing.T) {
	// Many events in one backend write go out in few writes; none is lost or reordered.
	const n = 1000
	var want strings.Builder
	for i := range n {
		want.WriteString("data: " + chunk("t"+itoa(i)) + "\n\n")
	}
	want.WriteString("data: [DONE]\n\n")
	be := &fakeBackend{handle: func(w http.ResponseWriter, body []byte) {
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, want.String())
	}}
	r := newRig(t, be)
	st, body := r.post(t, `{"model":"m","messages":[],"stream":true,"stream_options":{"include_usage":true}}`)
	if st != 200 {
		t.Fatalf("status %d", st)
	}
	if diff := cmp.Diff(want.String(), string(body)); diff != "" {
		t.Errorf("stream (-want +got):\n%s", diff)
	}
	if rec := r.rec.wait(t, 1)[0]; rec.Status != 200 || rec.CompletionTokens != n {
		t.Errorf("record %+v", rec)
	}
}

func TestInvalidRequestBodies(t *testing.T) {
	r := newRig(t, &fakeBackend{handle: unary})
	tests := []struct{ body, param, msg string }{
		{`{"model":"m",`, "", "request body is not valid JSON: unexpected end of JSON input"},
		{`{"model":"m","messages":[1,]}`, "", "request body is not valid JSON: invalid character ']' looking for beginning of value"},
		{`{"max_tokens":"x","model":"m",}`, "", "request body is not valid JSON: invalid character '}' looking for beginning of object key string"},
		{`[1,2]`, "", "request body must be a JSON object"},
		{`  `, "", "request body is empty; send a JSON object"},
		{`{"model":"m","max_tokens":-1}`, "max_tokens", "max_tokens must be a non-negative integer"},
		{`{"messages":[]}`, "model", "you must provide a model parameter"},
	}
	for _, tc := range tests {
		st, b := r.post(t, tc.body)
		var env struct {
			Error struct {
				Message string  `json:"message"`
				Type    string  `json:"type"`
				Param   *string `json:"param"`
			} `json:"error"`
		}
		if err := json.Unmarshal(b, &env); err != nil {
			t.Fatalf("%s: %s", tc.body, b)
		}
		param := ""
		if env.Error.Param != nil {
			param = *env.Error.Param
		}
		if st != 400 || env.Error.Type != "invalid_request_error" || env.Error.Message != tc.msg || param != tc.param {
			t.Errorf("%s: status %d, error %+v (param %q), want message %q param %q", tc.body, st, env.Error, param, tc.param, tc.msg)
		}
	}
}
