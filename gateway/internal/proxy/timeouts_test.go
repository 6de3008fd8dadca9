package proxy

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/sony/gobreaker/v2"
	"github.com/valyala/fasthttp"

	"github.com/maas-platform/maas/gateway/internal/snapshot"
	"github.com/maas-platform/maas/gateway/internal/upstream"
	"github.com/maas-platform/maas/pkg/apikey"
)

// newURLRig serves a Handler on loopback in front of backends at urls (ids b0, b1, …) and
// returns the handler too.
func newURLRig(t *testing.T, tweak func(*upstream.Options, *Options), urls ...string) (*rig, *Handler) {
	t.Helper()
	now := time.Now()
	b := snapshot.NewBuilder(now)
	b.AddUser(&snapshot.User{ID: 1, Username: "u", Active: true, Roles: []string{"user"}})
	b.AddKey(apikey.Sum([]byte(testKey)), &snapshot.Key{ID: 10, UserID: 1})
	for i, u := range urls {
		b.AddBackend(snapshot.Backend{ID: "b" + itoa(i), URL: u, Models: []string{"m"}, Capacity: 100, Weight: 100,
			State: "healthy", HeartbeatInterval: time.Hour, Load: snapshot.Load{ID: "b" + itoa(i), State: "healthy", ReadAt: now}})
	}
	snap := b.Build()
	po := upstream.DefaultOptions()
	o := DefaultOptions()
	o.AccessLog = false
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
	srv := &fasthttp.Server{Handler: h.ChatCompletions, ReadTimeout: 30 * time.Second}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Shutdown() })
	return &rig{url: "http://" + ln.Addr().String(), rec: rec, pool: pool}, h
}

// hangingBackend accepts connections and reads from them, never answering.
func hangingBackend(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
			go io.Copy(io.Discard, c)
		}
	}()
	return "http://" + ln.Addr().String()
}

func TestUnaryFirstByteTimeoutFailsOver(t *testing.T) {
	good := httptest.NewServer(&fakeBackend{handle: unary})
	t.Cleanup(good.Close)
	r, h := newURLRig(t, func(po *upstream.Options, o *Options) {
		po.BreakerFailures = 1
		o.FirstByteTimeout, o.RequestTimeout = 200*time.Millisecond, 5*time.Second
	}, hangingBackend(t), good.URL)
	hangFailures := func() float64 { return testutil.ToFloat64(h.m.upstreamErr.WithLabelValues("b0", "timeout")) }
	for i := 0; i < 30 && hangFailures() == 0; i++ {
		start := time.Now()
		if st, b := r.post(t, `{"model":"m","messages":[{"role":"user","content":"hi"}]}`); st != 200 {
			t.Fatalf("request %d: status %d: %s", i, st, b)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Fatalf("request %d took %v: the hanging backend was not given up after the first-byte timeout", i, d)
		}
	}
	if hangFailures() == 0 {
		t.Fatal("the hanging backend was never tried")
	}
	if st := r.pool.Get("b0").BreakerState(); st != gobreaker.StateOpen {
		t.Errorf("breaker of the hanging backend %v, want open (its timeout counts as a failure)", st)
	}
	for _, rec := range r.rec.wait(t, 1) {
		if rec.Status != 200 || rec.Backend != "b1" {
			t.Errorf("record %+v", rec)
		}
	}
}

func TestUnaryLongGenerationIsNotCut(t *testing.T) {
	// The engine reads the request at once (its HTTP server answers "100 Continue") and
	// answers after 3 first-byte timeouts: a long generation, not a hang.
	slow := httptest.NewServer(&fakeBackend{handle: func(w http.ResponseWriter, body []byte) {
		time.Sleep(600 * time.Millisecond)
		unary(w, body)
	}})
	t.Cleanup(slow.Close)
	r, h := newURLRig(t, func(_ *upstream.Options, o *Options) { o.FirstByteTimeout = 200 * time.Millisecond }, slow.URL)
	if st, b := r.post(t, `{"model":"m","messages":[]}`); st != 200 {
		t.Fatalf("status %d: %s", st, b)
	}
	if n := testutil.ToFloat64(h.m.upstreamErr.WithLabelValues("b0", "timeout")); n != 0 {
		t.Errorf("%v timeouts on a backend that was generating", n)
	}
}

func TestUnaryResponseHeaderTimeout(t *testing.T) {
	// An engine that reads the request and never answers is caught by the optional bound on
	// the response headers, and the request fails over.
	hang := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.ReadAll(r.Body)
		select {
		case <-r.Context().Done():
		case <-time.After(5 * time.Second):
		}
	}))
	t.Cleanup(hang.Close)
	good := httptest.NewServer(&fakeBackend{handle: unary})
	t.Cleanup(good.Close)
	r, h := newURLRig(t, func(_ *upstream.Options, o *Options) {
		o.FirstByteTimeout, o.ResponseHeaderTimeout = 200*time.Millisecond, 300*time.Millisecond
	}, hang.URL, good.URL)
	for i := 0; i < 30 && testutil.ToFloat64(h.m.upstreamErr.WithLabelValues("b0", "timeout")) == 0; i++ {
		start := time.Now()
		if st, b := r.post(t, `{"model":"m","messages":[]}`); st != 200 {
			t.Fatalf("status %d: %s", st, b)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Fatalf("took %v", d)
		}
	}
	if testutil.ToFloat64(h.m.upstreamErr.WithLabelValues("b0", "timeout")) == 0 {
		t.Fatal("the hanging backend was never tried")
	}
}

func TestUnaryClientGoneCancelsBackend(t *testing.T) {
	got := make(chan struct{}, 1)
	cancelled := make(chan time.Time, 1)
	be := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.ReadAll(r.Body)
		got <- struct{}{}
		select {
		case <-r.Context().Done(): // the gateway closed the connection
			cancelled <- time.Now()
		case <-time.After(10 * time.Second):
		}
	}))
	t.Cleanup(be.Close)
	r, _ := newURLRig(t, nil, be.URL)

	c, err := net.Dial("tcp", strings.TrimPrefix(r.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	body := `{"model":"m","messages":[]}`
	_, err = io.WriteString(c, "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer "+testKey+
		"\r\nContent-Type: application/json\r\nContent-Length: "+itoa(len(body))+"\r\n\r\n"+body)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-got:
	case <-time.After(5 * time.Second):
		t.Fatal("the backend never got the request")
	}
	left := time.Now()
	c.Close()
	select {
	case at := <-cancelled:
		if d := at.Sub(left); d > 2*time.Second {
			t.Errorf("the backend request was cancelled %v after the client left", d)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the backend request was not cancelled when the client left")
	}
	rec := r.rec.wait(t, 1)[0]
	if rec.Status != 499 || rec.ErrorType != "client_closed_request" {
		t.Errorf("record %+v", rec)
	}
	deadline := time.Now().Add(5 * time.Second)
	for r.pool.Get("b0").InFlight() != 0 {
		if time.Now().After(deadline) {
			t.Fatal("backend slot still held")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestUnaryPipelinedClientIsNotCut(t *testing.T) {
	// A client that pipelines a second request while the first waits is not "gone": both
	// are answered, in order.
	be := httptest.NewServer(&fakeBackend{handle: func(w http.ResponseWriter, body []byte) {
		time.Sleep(300 * time.Millisecond)
		unary(w, body)
	}})
	t.Cleanup(be.Close)
	r, _ := newURLRig(t, nil, be.URL)
	c, err := net.Dial("tcp", strings.TrimPrefix(r.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	body := `{"model":"m","messages":[]}`
	req := "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer " + testKey +
		"\r\nContent-Type: application/json\r\nContent-Length: " + itoa(len(body)) + "\r\n\r\n" + body
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	time.Sleep(150 * time.Millisecond) // the first request is being watched
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(c)
	for i := range 2 {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("response %d: %v", i, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(b) != unaryAnswer {
			t.Errorf("response %d: status %d body %s", i, resp.StatusCode, b)
		}
	}
}

func TestUnaryBackendWithoutContinueIsLearned(t *testing.T) {
	// This backend answers without reading the body, so it never sends "100 Continue": once
	// seen answering like that, its slow answers are not cut by the first-byte timeout.
	var calls atomic.Int32
	be := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1) > 1 {
			time.Sleep(600 * time.Millisecond)
		}
		unary(w, nil)
	}))
	t.Cleanup(be.Close)
	r, h := newURLRig(t, func(_ *upstream.Options, o *Options) { o.FirstByteTimeout = 200 * time.Millisecond }, be.URL)
	for i := range 2 {
		if st, b := r.post(t, `{"model":"m","messages":[]}`); st != 200 {
			t.Fatalf("request %d: status %d: %s", i, st, b)
		}
	}
	if n := testutil.ToFloat64(h.m.upstreamErr.WithLabelValues("b0", "timeout")); n != 0 {
		t.Errorf("%v timeouts", n)
	}
}

func TestUnaryCutAtShutdown(t *testing.T) {
	// When the shutdown grace is over, a non-streamed request still waiting for its backend
	// is answered 503 and recorded, and the backend connection is closed.
	cancelled := make(chan struct{}, 1)
	be := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.ReadAll(r.Body)
		select {
		case <-r.Context().Done():
			cancelled <- struct{}{}
		case <-time.After(10 * time.Second):
		}
	}))
	t.Cleanup(be.Close)
	base, cut := context.WithCancel(context.Background())
	defer cut()
	r, _ := newURLRig(t, func(_ *upstream.Options, o *Options) { o.BaseContext = base }, be.URL)
	time.AfterFunc(300*time.Millisecond, cut)
	start := time.Now()
	st, b := r.post(t, `{"model":"m","messages":[]}`)
	if st != 503 || !strings.Contains(string(b), "shutting down") {
		t.Fatalf("status %d: %s", st, b)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("cut after %v", d)
	}
	select {
	case <-cancelled:
	case <-time.After(5 * time.Second):
		t.Error("the backend request was not cancelled")
	}
	if rec := r.rec.wait(t, 1)[0]; rec.Status != 503 {
		t.Errorf("record %+v", rec)
	}
}
