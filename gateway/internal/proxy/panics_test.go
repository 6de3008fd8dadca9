package proxy

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/valyala/fasthttp"

	"github.com/maas-platform/maas/gateway/internal/ledger"
	"github.com/maas-platform/maas/gateway/internal/panics"
	"github.com/maas-platform/maas/gateway/internal/snapshot"
	"github.com/maas-platform/maas/gateway/internal/upstream"
	"github.com/maas-platform/maas/pkg/apierr"
	"github.com/maas-platform/maas/pkg/apikey"
)

// limitQuota admits at most limit requests at once; it can be told to panic.
type limitQuota struct {
	mu          sync.Mutex
	open, limit int
	panicAdmit  atomic.Bool
	panicSettle atomic.Bool
}

func (q *limitQuota) Admit(_ context.Context, _ *snapshot.Key, _ int64) (Ticket, error) {
	if q.panicAdmit.Load() {
		panic("injected: admit")
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.open >= q.limit {
		return nil, &apierr.Error{Kind: apierr.RateLimited, Message: "concurrency limit"}
	}
	q.open++
	return limitTicket{q}, nil
}

func (q *limitQuota) opened() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.open
}

type limitTicket struct{ q *limitQuota }

func (t limitTicket) Settle(int64) {
	t.q.mu.Lock()
	t.q.open--
	t.q.mu.Unlock()
	if t.q.panicSettle.Load() {
		panic("injected: settle")
	}
}

// panicLedger records usage, or panics when told to.
type panicLedger struct {
	recorder
	panicAdd atomic.Bool
}

func (l *panicLedger) Add(r ledger.Record) {
	if l.panicAdd.Load() {
		panic("injected: ledger")
	}
	l.recorder.Add(r)
}

type panicRig struct {
	*rig
	h      *Handler
	q      *limitQuota
	led    *panicLedger
	rec    *panics.Recorder
	inject atomic.Value // string: the hook point that panics ("" none)
}

// newPanicRig serves a Handler with a concurrency limit of 1, a panic recorder and a
// panic injector, in front of one backend.
func newPanicRig(t *testing.T, backend http.Handler) *panicRig {
	t.Helper()
	now := time.Now()
	b := snapshot.NewBuilder(now)
	b.AddUser(&snapshot.User{ID: 1, Username: "u", Active: true, Roles: []string{"user"}})
	b.AddKey(apikey.Sum([]byte(testKey)), &snapshot.Key{ID: 10, UserID: 1})
	srv := httptest.NewServer(backend)
	t.Cleanup(srv.Close)
	b.AddBackend(snapshot.Backend{ID: "b0", URL: srv.URL, Models: []string{"m"}, Capacity: 100, Weight: 100,
		State: "healthy", HeartbeatInterval: time.Hour, Load: snapshot.Load{ID: "b0", State: "healthy", ReadAt: now}})
	snap := b.Build()
	pool, err := upstream.New(upstream.DefaultOptions())
	if err != nil {
		t.Fatal(err)
	}
	pool.Sync(snap)
	pr := &panicRig{q: &limitQuota{limit: 1}, led: &panicLedger{}}
	pr.inject.Store("")
	pr.rec, err = panics.New(nil, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	o := DefaultOptions()
	o.FirstByteTimeout, o.StreamIdleTimeout = 2*time.Second, 2*time.Second
	o.Snapshots, o.Pool, o.Quota, o.Ledger, o.Panics = fakeSnapshots{snap}, pool, pr.q, pr.led, pr.rec
	o.AccessLog = false
	if pr.h, err = New(o); err != nil {
		t.Fatal(err)
	}
	pr.h.testHook = func(where string) {
		if pr.inject.Load().(string) == where {
			panic("injected: " + where)
		}
	}
	fs := &fasthttp.Server{Handler: pr.h.ChatCompletions}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go fs.Serve(ln)
	t.Cleanup(func() { fs.Shutdown() })
	pr.rig = &rig{url: "http://" + ln.Addr().String(), rec: &pr.led.recorder, pool: pool}
	return pr
}

// released waits until the backend slot and the concurrency ticket are returned.
func (pr *panicRig) released(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for pr.pool.Get("b0").InFlight() != 0 || pr.q.opened() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("held after the panic: backend in flight %d, quota tickets %d", pr.pool.Get("b0").InFlight(), pr.q.opened())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestPanicsAreRecoveredAndReleaseEverything(t *testing.T) {
	const unaryBody, streamBody = `{"model":"m","messages":[]}`, `{"model":"m","messages":[],"stream":true}`
	tests := []struct {
		name   string
		where  string // panics label
		body   string
		arm    func(pr *panicRig)
		status int    // the client's status
		inBody string // what the client's body must hold
	}{
		{"handler", panics.Handler, unaryBody, func(pr *panicRig) { pr.inject.Store("exchange") }, 500, `"type":"api_error"`},
		{"stream writer", panics.Stream, streamBody, func(pr *panicRig) { pr.inject.Store("event") }, 200, `data: {"error":{"message":"internal error","type":"api_error"`},
		{"admission", panics.Admit, unaryBody, func(pr *panicRig) { pr.q.panicAdmit.Store(true) }, 500, `"type":"api_error"`},
		{"settlement", panics.Admit, unaryBody, func(pr *panicRig) { pr.q.panicSettle.Store(true) }, 200, `"chat.completion"`},
		{"ledger", panics.Ledger, streamBody, func(pr *panicRig) { pr.led.panicAdd.Store(true) }, 200, "data: [DONE]"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pr := newPanicRig(t, &fakeBackend{handle: func(w http.ResponseWriter, body []byte) {
				if strings.Contains(string(body), `"stream":true`) {
					streamer(3)(w, body)
					return
				}
				unary(w, body)
			}})
			tc.arm(pr)
			st, body := pr.post(t, tc.body)
			if st != tc.status || !strings.Contains(string(body), tc.inBody) {
				t.Fatalf("status %d body %s; want %d with %s", st, body, tc.status, tc.inBody)
			}
			if n := pr.rec.Count(tc.where); n != 1 {
				t.Errorf("maas_gateway_panics_total{where=%q} = %v, want 1", tc.where, n)
			}
			pr.released(t)
			// Disarm: the next request (concurrency limit 1) is served.
			pr.inject.Store("")
			pr.q.panicAdmit.Store(false)
			pr.q.panicSettle.Store(false)
			pr.led.panicAdd.Store(false)
			if st, body := pr.post(t, tc.body); st != 200 {
				t.Fatalf("next request: status %d: %s", st, body)
			}
			pr.released(t)
		})
	}
}
