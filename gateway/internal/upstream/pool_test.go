package upstream

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/sony/gobreaker/v2"

	"github.com/maas-platform/maas/gateway/internal/snapshot"
	"github.com/maas-platform/maas/pkg/apierr"
)

var now = time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)

func backend(id string, capacity, weight int) snapshot.Backend {
	return snapshot.Backend{ID: id, URL: "http://127.0.0.1:1/" + id, EngineKind: "sim", Models: []string{"m"},
		Capacity: capacity, Weight: weight, State: "healthy", HeartbeatInterval: time.Second,
		Load: snapshot.Load{ID: id, State: "healthy", ReadAt: now}}
}

func newTestPool(t *testing.T, policy string, o Options, backends ...snapshot.Backend) (*Pool, *snapshot.Model) {
	t.Helper()
	o.Now = func() time.Time { return now }
	p, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	b := snapshot.NewBuilder(now)
	m := &snapshot.Model{Name: "m", Enabled: true, Policy: policy, MaxOutputTokens: 16}
	b.AddModel(m)
	for _, be := range backends {
		b.AddBackend(be)
	}
	p.Sync(b.Build())
	return p, m
}

func testOptions() Options {
	o := DefaultOptions()
	o.QueueTimeout = time.Second
	return o
}

func TestLeastOutstandingPrefersIdleBackend(t *testing.T) {
	p, m := newTestPool(t, snapshot.PolicyLeastOutstanding, testOptions(), backend("a", 100, 100), backend("b", 100, 100))
	busy := p.Get("a")
	busy.inFlight.Store(50)
	for range 100 {
		l, err := p.Acquire(context.Background(), Request{Model: m})
		if err != nil {
			t.Fatal(err)
		}
		if l.U.ID != "b" {
			t.Fatalf("picked %s with 50 in flight over an idle backend", l.U.ID)
		}
		l.Release(Success)
	}
}

func TestWeightsShareLoad(t *testing.T) {
	p, m := newTestPool(t, snapshot.PolicyLeastOutstanding, testOptions(), backend("a", 1000, 300), backend("b", 1000, 100))
	var leases []*Lease
	for range 400 {
		l, err := p.Acquire(context.Background(), Request{Model: m})
		if err != nil {
			t.Fatal(err)
		}
		leases = append(leases, l)
	}
	a, b := p.Get("a").InFlight(), p.Get("b").InFlight()
	if a < 270 || a > 330 || a+b != 400 {
		t.Errorf("in flight a=%d b=%d, want about 300/100", a, b)
	}
	for _, l := range leases {
		l.Release(Success)
	}
	if p.Get("a").InFlight() != 0 || p.Get("b").InFlight() != 0 {
		t.Error("slots leaked")
	}
}

func TestEngineLoadBreaksTies(t *testing.T) {
	p, m := newTestPool(t, snapshot.PolicyLeastOutstanding, testOptions(), backend("a", 10, 100), backend("b", 10, 100))
	p.Get("a").waiting.Store(5)
	for range 50 {
		l, _ := p.Acquire(context.Background(), Request{Model: m})
		if l.U.ID != "b" {
			t.Fatalf("picked %s, which reports waiting requests", l.U.ID)
		}
		l.Release(Success)
	}
}

func TestCapacityAndQueue(t *testing.T) {
	o := testOptions()
	o.QueueTimeout = 50 * time.Millisecond
	o.QueueSize = 1
	p, m := newTestPool(t, snapshot.PolicyLeastOutstanding, o, backend("a", 2, 100))
	l1, _ := p.Acquire(context.Background(), Request{Model: m})
	l2, _ := p.Acquire(context.Background(), Request{Model: m})
	if l1 == nil || l2 == nil {
		t.Fatal("could not fill capacity")
	}
	// Full: one request may wait; it gets the slot released meanwhile.
	got := make(chan *Lease)
	go func() {
		l, err := p.Acquire(context.Background(), Request{Model: m, User: 1})
		if err != nil {
			t.Error(err)
		}
		got <- l
	}()
	for p.QueueDepth() != 1 {
		time.Sleep(time.Millisecond)
	}
	// The queue is full now: the next request is refused at once.
	_, err := p.Acquire(context.Background(), Request{Model: m, User: 2})
	var ae *apierr.Error
	if !errors.As(err, &ae) || ae.Kind != apierr.Unavailable || !errors.Is(err, ErrQueueFull) {
		t.Fatalf("err = %v, want queue full 503", err)
	}
	l1.Release(Success)
	l3 := <-got
	if l3 == nil || l3.U.ID != "a" {
		t.Fatal("queued request did not get the freed slot")
	}
	// Nothing is released now: a waiter times out with 503.
	_, err = p.Acquire(context.Background(), Request{Model: m, User: 3})
	if !errors.Is(err, ErrQueueTimeout) {
		t.Fatalf("err = %v, want queue timeout", err)
	}
	l2.Release(Success)
	l3.Release(Success)
}

func TestQueueIsFairAcrossUsers(t *testing.T) {
	o := testOptions()
	o.QueueTimeout = 5 * time.Second
	p, m := newTestPool(t, snapshot.PolicyLeastOutstanding, o, backend("a", 1, 100))
	hold, _ := p.Acquire(context.Background(), Request{Model: m})
	order := make(chan int64, 100)
	start := func(user int64) {
		go func() {
			l, err := p.Acquire(context.Background(), Request{Model: m, User: user})
			if err != nil {
				t.Error(err)
				return
			}
			order <- user
			l.Release(Success)
		}()
	}
	// Tenant 1 bursts 20 requests, then tenant 2 sends 3.
	for range 20 {
		start(1)
	}
	for p.QueueDepth() != 20 {
		time.Sleep(time.Millisecond)
	}
	for range 3 {
		start(2)
	}
	for p.QueueDepth() != 23 {
		time.Sleep(time.Millisecond)
	}
	hold.Release(Success)
	var seq []int64
	for range 23 {
		seq = append(seq, <-order)
	}
	// Round robin: tenant 2's three requests are among the first seven served.
	n2 := 0
	for _, u := range seq[:7] {
		if u == 2 {
			n2++
		}
	}
	if n2 != 3 {
		t.Errorf("service order %v: tenant 2 got %d of the first 7 slots, want 3", seq, n2)
	}
}

func TestBreakerOpensAndExcludes(t *testing.T) {
	o := testOptions()
	o.BreakerFailures = 3
	o.BreakerOpenFor = time.Hour
	p, m := newTestPool(t, snapshot.PolicyLeastOutstanding, o, backend("a", 10, 100), backend("b", 10, 100))
	a := p.Get("a")
	for range 3 {
		l, err := p.Acquire(context.Background(), Request{Model: m, Exclude: []*Upstream{p.Get("b")}})
		if err != nil || l.U != a {
			t.Fatalf("acquire a: %v", err)
		}
		l.Release(Failure)
	}
	if a.BreakerState() != gobreaker.StateOpen {
		t.Fatalf("breaker %v after 3 failures, want open", a.BreakerState())
	}
	for range 20 {
		l, err := p.Acquire(context.Background(), Request{Model: m})
		if err != nil || l.U.ID != "b" {
			t.Fatalf("got %v %v, want b while a's breaker is open", l, err)
		}
		l.Release(Success)
	}
	// Only a left: no healthy backend.
	_, err := p.Acquire(context.Background(), Request{Model: m, Exclude: []*Upstream{p.Get("b")}})
	if !errors.Is(err, ErrNoBackend) {
		t.Fatalf("err = %v, want ErrNoBackend", err)
	}
}

func TestNeutralOutcomeDoesNotTrip(t *testing.T) {
	o := testOptions()
	p, m := newTestPool(t, snapshot.PolicyLeastOutstanding, o, backend("a", 10, 100))
	for range 10 {
		l, _ := p.Acquire(context.Background(), Request{Model: m})
		l.Release(Neutral)
	}
	if s := p.Get("a").BreakerState(); s != gobreaker.StateClosed {
		t.Errorf("breaker %v after client cancellations", s)
	}
}

func TestUnroutableBackends(t *testing.T) {
	stale := backend("stale", 10, 100)
	stale.Load.State = "unhealthy" // control's reaper: 3 heartbeats missed
	draining := backend("draining", 10, 100)
	draining.Load.State = "draining"
	disabled := backend("disabled", 10, 100)
	disabled.Load.Disabled = true
	zero := backend("zero", 10, 0)
	p, m := newTestPool(t, snapshot.PolicyLeastOutstanding, testOptions(), stale, draining, disabled, zero)
	if l, err := p.Acquire(context.Background(), Request{Model: m}); !errors.Is(err, ErrNoBackend) {
		t.Fatalf("err = %v (lease %s), want ErrNoBackend", err, l.U.ID)
	}
	// Fresh heartbeat: control marks it healthy, routable again.
	l := stale.Load
	l.State = "healthy"
	p.UpdateLoad([]snapshot.Load{l})
	got, err := p.Acquire(context.Background(), Request{Model: m})
	if err != nil || got.U.ID != "stale" {
		t.Fatalf("got %v %v", got, err)
	}
}

func TestPrefixAffinity(t *testing.T) {
	var bs []snapshot.Backend
	for i := range 4 {
		bs = append(bs, backend(fmt.Sprintf("b%d", i), 1000, 100))
	}
	p, m := newTestPool(t, snapshot.PolicyPrefixAffinity, testOptions(), bs...)
	// Same prefix → same backend while load is even.
	seen := map[string]int{}
	for i := range 40 {
		key := AffinityKey([]byte(fmt.Sprintf("system prompt %d", i%4)))
		l, err := p.Acquire(context.Background(), Request{Model: m, Affinity: key})
		if err != nil {
			t.Fatal(err)
		}
		id := fmt.Sprint(i%4, l.U.ID)
		seen[id]++
		l.Release(Success)
	}
	if len(seen) != 4 {
		t.Errorf("prefixes spread over %d (prefix, backend) pairs, want 4: %v", len(seen), seen)
	}
	// Bounded load: one hot prefix does not pile everything on one backend.
	hot := AffinityKey([]byte("hot"))
	var leases []*Lease
	for range 100 {
		l, err := p.Acquire(context.Background(), Request{Model: m, Affinity: hot})
		if err != nil {
			t.Fatal(err)
		}
		leases = append(leases, l)
	}
	for _, u := range p.Upstreams() {
		if u.InFlight() > 40 { // 1.25 × the average of 25, plus rounding
			t.Errorf("%s has %d of 100 in flight", u.ID, u.InFlight())
		}
	}
	for _, l := range leases {
		l.Release(Success)
	}
}

func TestSyncKeepsCounters(t *testing.T) {
	p, m := newTestPool(t, snapshot.PolicyLeastOutstanding, testOptions(), backend("a", 10, 100))
	l, _ := p.Acquire(context.Background(), Request{Model: m})
	b := snapshot.NewBuilder(now)
	b.AddModel(m)
	be := backend("a", 20, 100)
	b.AddBackend(be)
	b.AddBackend(backend("c", 10, 100))
	p.Sync(b.Build())
	if u := p.Get("a"); u.InFlight() != 1 || u.Capacity() != 20 {
		t.Errorf("a: in flight %d capacity %d", u.InFlight(), u.Capacity())
	}
	if p.Get("c") == nil {
		t.Error("c not added")
	}
	l.Release(Success)
	b = snapshot.NewBuilder(now)
	b.AddModel(m)
	p.Sync(b.Build())
	if len(p.Upstreams()) != 0 {
		t.Error("removed backends kept")
	}
}

func BenchmarkAcquireRelease(b *testing.B) {
	o := DefaultOptions()
	o.Now = func() time.Time { return now }
	p, _ := New(o)
	sb := snapshot.NewBuilder(now)
	m := &snapshot.Model{Name: "m", Enabled: true}
	sb.AddModel(m)
	for i := range 4 {
		sb.AddBackend(backend(fmt.Sprint("b", i), 1<<20, 100))
	}
	p.Sync(sb.Build())
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		l, err := p.Acquire(context.Background(), Request{Model: m})
		if err != nil {
			b.Fatal(err)
		}
		l.Release(Success)
	}
}

func TestConnectionLimitFollowsCapacity(t *testing.T) {
	p, _ := newTestPool(t, snapshot.PolicyLeastOutstanding, testOptions(), backend("a", 20000, 100))
	u := p.Get("a")
	want := 20000 + connHeadroom
	if u.Client.MaxConns != want || u.Stream.MaxConns != want {
		t.Fatalf("max conns %d/%d with capacity 20000, want %d", u.Client.MaxConns, u.Stream.MaxConns, want)
	}
	b := snapshot.NewBuilder(now)
	b.AddModel(&snapshot.Model{Name: "m", Enabled: true, MaxOutputTokens: 16})
	b.AddBackend(backend("a", 10, 100))
	p.Sync(b.Build())
	if u2 := p.Get("a"); u2 != u || u.Client.MaxConns != 10+connHeadroom || u.Stream.MaxConns != 10+connHeadroom {
		t.Fatalf("after capacity 10: max conns %d/%d, want %d", u.Client.MaxConns, u.Stream.MaxConns, 10+connHeadroom)
	}
}

func TestOpenBreakerLetsAProbeThroughAfterOpenFor(t *testing.T) {
	o := testOptions()
	o.BreakerFailures = 1
	o.BreakerOpenFor = 50 * time.Millisecond
	p, m := newTestPool(t, snapshot.PolicyLeastOutstanding, o, backend("a", 10, 100))
	l, err := p.Acquire(context.Background(), Request{Model: m})
	if err != nil {
		t.Fatal(err)
	}
	l.Release(Failure)
	if _, err := p.Acquire(context.Background(), Request{Model: m}); !errors.Is(err, ErrNoBackend) {
		t.Fatalf("err = %v while the breaker is open, want ErrNoBackend", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		l, err := p.Acquire(context.Background(), Request{Model: m})
		if err == nil {
			if st := l.U.BreakerState(); st != gobreaker.StateHalfOpen {
				t.Errorf("probe taken in state %v, want half-open", st)
			}
			l.Release(Success)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no probe after the open period: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if st := p.Get("a").BreakerState(); st != gobreaker.StateClosed {
		t.Errorf("breaker %v after a successful probe, want closed", st)
	}
	if l, err := p.Acquire(context.Background(), Request{Model: m}); err != nil {
		t.Errorf("after the probe: %v", err)
	} else {
		l.Release(Success)
	}
}

// Heartbeats are control's to judge (its reaper marks a silent backend unhealthy): the
// gateway routes by the state in the row, however old the heartbeat it shows and however
// long since the rows were read. Heartbeats travel worker → control → PostgreSQL →
// gateway, so their silence during a control or PostgreSQL outage says nothing about the
// backend; a gateway judging them itself dropped every backend a few seconds into either.
func TestHeartbeatAgeIsControlsToJudge(t *testing.T) {
	clock := now
	p, err := New(testOptions())
	if err != nil {
		t.Fatal(err)
	}
	p.o.Now = func() time.Time { return clock }
	b := snapshot.NewBuilder(now)
	m := &snapshot.Model{Name: "m", Enabled: true, Policy: snapshot.PolicyLeastOutstanding, MaxOutputTokens: 16}
	b.AddModel(m)
	a := backend("a", 10, 100)
	a.HeartbeatInterval = 500 * time.Millisecond
	b.AddBackend(a)
	p.Sync(b.Build())

	for _, later := range []time.Duration{time.Second, 3 * time.Second, 6 * time.Second, time.Minute} {
		clock = now.Add(later) // no read of the rows since (PostgreSQL is away)
		l, err := p.Acquire(context.Background(), Request{Model: m})
		if err != nil {
			t.Fatalf("%v without a read: %v, want the backend", later, err)
		}
		l.Release(Success)
	}
	// Rows read again while control was away: the heartbeat is a minute old, the state
	// still healthy. Routed; the health gauge agrees.
	p.UpdateLoad([]snapshot.Load{{ID: "a", State: "healthy", ReadAt: clock, HeartbeatAge: time.Minute}})
	l, err := p.Acquire(context.Background(), Request{Model: m})
	if err != nil {
		t.Fatalf("healthy row with an old heartbeat: %v, want the backend", err)
	}
	l.Release(Success)
	if n := p.HealthyBackends()["m"]; n != 1 {
		t.Fatalf("healthy backends gauge %d, want 1", n)
	}
	// Control's reaper marks it unhealthy: not routed.
	p.UpdateLoad([]snapshot.Load{{ID: "a", State: "unhealthy", ReadAt: clock, HeartbeatAge: time.Minute}})
	if l, err := p.Acquire(context.Background(), Request{Model: m}); !errors.Is(err, ErrNoBackend) {
		t.Fatalf("unhealthy: err = %v (lease %v), want ErrNoBackend", err, l)
	}
}
