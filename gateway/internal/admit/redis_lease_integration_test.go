package admit

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

func leasedTickets(ts []*Ticket) int {
	n := 0
	for _, tk := range ts {
		if tk.leased {
			n++
		}
	}
	return n
}

// TestRedisLeaseRPMBound: two gateways holding leases of one key's requests per minute admit,
// in a window, at most the bucket's bound plus what each held unspent when it began (one
// grant each: LeaseShare × L), and never more.
func TestRedisLeaseRPMBound(t *testing.T) {
	env := newRedisEnv(t)
	clk := newClock()
	a, b := env.limiter(t, clk, nil), env.limiter(t, clk, nil)
	const limit, grant = 600, 10 // 1/60 of the limit
	r := reqOf(0, keySubject(21, Limits{RequestsPerMinute: limit}))
	ctx := context.Background()
	for _, f := range []fixture{a, b} { // each takes a grant and spends one request of it
		tk, err := f.l.Admit(ctx, r)
		if err != nil || !tk.leased {
			t.Fatalf("first admission: %v (leased %v)", err, tk != nil && tk.leased)
		}
		tk.Settle(0)
	}
	if got := env.hget(t, "key:21", "r"); got != limit-2*grant {
		t.Fatalf("bucket after two grants: %v, want %d", got, limit-2*grant)
	}
	clk.Advance(59 * time.Second) // the bucket is full again; the grants are still held (a minute)
	ts := hammerBoth(t, a.l, b.l, r, 4, 2000)
	settleAll(ts, 0)
	if max := limit + 2*grant; len(ts) > max || len(ts) <= limit {
		t.Fatalf("window at a full bucket: admitted %d, want more than %d (the held grants) and at most %d (L + G × grant)", len(ts), limit, max)
	}
	if len(ts) != limit+2*(grant-1) {
		t.Errorf("admitted %d, want %d: the bucket and what was left of both grants", len(ts), limit+2*(grant-1))
	}
	if got := a.rejections("key", "rpm") + b.rejections("key", "rpm"); got == 0 {
		t.Error("no rpm rejection counted")
	}
	if a.fallbacks()+b.fallbacks() != 0 {
		t.Error("fallback counted with Redis up")
	}
}

// TestRedisLeaseConcurrencyExact: concurrency leased in blocks stays exact across gateways,
// and the blocks are released when the leases end.
func TestRedisLeaseConcurrencyExact(t *testing.T) {
	env := newRedisEnv(t)
	clk := newClock()
	a, b := env.limiter(t, clk, nil), env.limiter(t, clk, nil)
	r := reqOf(0, userSubject(22, Limits{MaxConcurrent: 240})) // blocks of 4
	ts := hammerBoth(t, a.l, b.l, r, 4, 1000)
	// A request that finds its gateway's block taken by the time its grant came is decided
	// per request (exactly, too).
	if len(ts) != 240 || leasedTickets(ts) < 200 {
		t.Fatalf("admitted %d (%d from leases), want exactly 240, most from leases", len(ts), leasedTickets(ts))
	}
	// Settled, the leased tickets' slots go back to their gateway's block (still held in
	// Redis while the lease lives); the others' are released in Redis by their settlement.
	perRequest := int64(len(ts) - leasedTickets(ts))
	settleAll(ts, 0)
	zkey := env.prefix + "c:user:22"
	poll(t, "per-request slots released, leased blocks kept", func() bool {
		return env.c.ZCard(context.Background(), zkey).Val() == 240-perRequest
	})
	a.l.Close()
	b.l.Close()
	if n := env.c.ZCard(context.Background(), zkey).Val(); n != 0 {
		t.Errorf("slots held in Redis after Close: %d, want 0", n)
	}
}

// TestRedisLeaseEndRefunds: a lease charges its grant to Redis when taken; when it ends (here
// at Close) the tokens and budget its requests did not use go back, exactly once.
func TestRedisLeaseEndRefunds(t *testing.T) {
	env := newRedisEnv(t)
	clk := newClock()
	f := env.limiter(t, clk, func(o *Options) {
		o.BudgetUsed = func(context.Context, string, int64, time.Time) (int64, error) { return 0, nil }
	})
	sub := userSubject(23, Limits{RequestsPerMinute: 6000, TokensPerMinute: 60000, MaxConcurrent: 240, MonthlyTokenBudget: 600000})
	ctx := context.Background()
	for range 5 {
		tk, err := f.l.Admit(ctx, reqOf(100, sub))
		if err != nil || !tk.leased {
			t.Fatalf("admission: %v (leased %v)", err, tk != nil && tk.leased)
		}
		tk.Settle(40)
	}
	// One grant: 100 requests, 1,000 tokens, 10,000 of budget, 4 slots.
	held := map[string]float64{"r": 6000 - 100, "t": 60000 - 1000, "u": 10000}
	for field, want := range held {
		if got := env.hget(t, "user:23", field); got != want {
			t.Errorf("while leased: %s = %v, want %v", field, got, want)
		}
	}
	f.l.Close()
	// Unused requests are not given back (the bucket refills them); tokens and budget are.
	after := map[string]float64{"r": 6000 - 100, "t": 60000 - 5*40, "u": 5 * 40}
	for field, want := range after {
		if got := env.hget(t, "user:23", field); got != want {
			t.Errorf("after Close: %s = %v, want %v", field, got, want)
		}
	}
	if n := env.c.ZCard(ctx, env.prefix+"c:user:23").Val(); n != 0 {
		t.Errorf("slots held after Close: %d", n)
	}
}

// TestRedisLeaseLateGrantUndone: a grant whose reply comes too late is decided by the local
// tier and undone in Redis: requests, tokens, budget and slots given back.
func TestRedisLeaseLateGrantUndone(t *testing.T) {
	env := newRedisEnv(t)
	clk := newClock()
	f, p := proxied(t, env, clk, func(o *Options) {
		o.RedisTimeout = time.Second
		o.BudgetUsed = func(context.Context, string, int64, time.Time) (int64, error) { return 0, nil }
	})
	sub := userSubject(24, Limits{RequestsPerMinute: 6000, TokensPerMinute: 60000, MaxConcurrent: 240, MonthlyTokenBudget: 600000})
	ctx := context.Background()
	// The budget counter is seeded by a first grant; its lease then ends.
	tk, err := f.l.Admit(ctx, reqOf(100, sub))
	if err != nil || !tk.leased {
		t.Fatalf("first admission: %v", err)
	}
	tk.Settle(100)
	f.l.redis.endIdle(0)
	poll(t, "the first lease to end", func() bool { return env.hget(t, "user:24", "u") == 100 })
	before := map[string]float64{"r": env.hget(t, "user:24", "r"), "t": env.hget(t, "user:24", "t"), "u": 100}

	release := p.hold(t)
	late, err := f.l.Admit(ctx, reqOf(100, sub))
	release()
	if err != nil || late.leased || late.redis {
		t.Fatalf("admission with a held grant: %v, want the local tier", err)
	}
	poll(t, "the late grant to be undone", func() bool {
		return env.c.ZCard(ctx, env.prefix+"c:user:24").Val() == 0 && env.hget(t, "user:24", "u") == 100
	})
	for field, want := range before {
		if got := env.hget(t, "user:24", field); got != want {
			t.Errorf("field %s = %v after the undo, want %v", field, got, want)
		}
	}
	if n := int(testutil.ToFloat64(f.l.m.reconciled)); n != 1 {
		t.Errorf("reconciled %d, want 1", n)
	}
	late.Settle(100)
}

// TestRedisLeaseEndsInOutage: during an outage a gateway's leases end (their slots are not
// renewed, Redis may give them away); their settlements reach Redis when it returns, and
// idle leases end after LeaseTTL.
func TestRedisLeaseEndsInOutage(t *testing.T) {
	env := newRedisEnv(t)
	clk := newClock()
	f := env.limiter(t, clk, func(o *Options) { o.ProbeInterval = 10 * time.Millisecond })
	sub := userSubject(25, Limits{RequestsPerMinute: 6000, MaxConcurrent: 240})
	ctx := context.Background()
	tk, err := f.l.Admit(ctx, reqOf(0, sub))
	if err != nil || !tk.leased {
		t.Fatalf("admission: %v", err)
	}
	tk.Settle(0)
	zkey := env.prefix + "c:user:25"
	r := f.l.redis
	held := func() int {
		r.leasesMu.Lock()
		defer r.leasesMu.Unlock()
		return len(r.leases)
	}
	r.endLeases() // used just now: kept
	if n := env.c.ZCard(ctx, zkey).Val(); n != 4 || held() != 1 {
		t.Fatalf("after a fresh lease: %d slots, %d leases; want 4 and 1", n, held())
	}
	clk.Advance(f.l.o.LeaseTTL + time.Second)
	r.endLeases() // idle for LeaseTTL: ended
	poll(t, "the idle lease's slots released", func() bool { return env.c.ZCard(ctx, zkey).Val() == 0 })

	if tk, err = f.l.Admit(ctx, reqOf(0, sub)); err != nil || !tk.leased {
		t.Fatalf("admission: %v", err)
	}
	tk.Settle(0)
	for range f.l.o.FailuresToFallback {
		r.failed(errWait)
	}
	r.endLeases()
	if n := held(); n != 0 {
		t.Fatalf("%d leases held in an outage", n)
	}
	poll(t, "recovery", f.l.RedisUp)
	poll(t, "the slots released once Redis is back", func() bool { return env.c.ZCard(ctx, zkey).Val() == 0 })
}

// TestRedisLeaseRenewedAfterAMinute: a lease older than a minute admits no more; a new one is
// taken, and the old one ends (slots released, tokens given back) when its last request does.
func TestRedisLeaseRenewedAfterAMinute(t *testing.T) {
	env := newRedisEnv(t)
	clk := newClock()
	f := env.limiter(t, clk, nil)
	sub := userSubject(26, Limits{TokensPerMinute: 60000, MaxConcurrent: 240})
	ctx := context.Background()
	old, err := f.l.Admit(ctx, reqOf(100, sub))
	if err != nil || !old.leased {
		t.Fatalf("admission: %v", err)
	}
	clk.Advance(time.Minute + time.Second)
	tk, err := f.l.Admit(ctx, reqOf(100, sub))
	if err != nil || !tk.leased {
		t.Fatalf("admission: %v", err)
	}
	if tk.charges()[0].ls == old.charges()[0].ls {
		t.Fatal("a lease older than a minute admitted a request")
	}
	zkey := env.prefix + "c:user:26"
	if n := env.c.ZCard(ctx, zkey).Val(); n != 8 {
		t.Fatalf("slots held: %d, want 8 (the old lease's request still runs)", n)
	}
	old.Settle(40)
	poll(t, "the old lease to end", func() bool { return env.c.ZCard(ctx, zkey).Val() == 4 })
	// The bucket: full after the minute, less the new grant, plus the old one's 960 unused.
	poll(t, "the old lease's tokens back", func() bool { return env.hget(t, "user:26", "t") == 60000-1000+960 })
	tk.Settle(100)
}
