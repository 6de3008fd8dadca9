package admit

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"io"
	"net"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/redis/go-redis/v9"

	"github.com/maas-platform/maas/pkg/apierr"
	"github.com/maas-platform/maas/pkg/pgdb/pgtest"
)

// redisEnv is a key prefix of its own in the shared test Redis, deleted at cleanup.
type redisEnv struct {
	url    string
	prefix string
	c      *redis.Client
}

func newRedisEnv(t testing.TB) redisEnv {
	t.Helper()
	url := pgtest.RedisURL(t)
	ro, err := redis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	var b [6]byte
	rand.Read(b[:])
	e := redisEnv{url: url, prefix: "maas:test:" + hex.EncodeToString(b[:]) + ":", c: redis.NewClient(ro)}
	if err := e.c.Ping(context.Background()).Err(); err != nil {
		t.Fatalf("redis at MAAS_TEST_REDIS_URL: %v", err)
	}
	t.Cleanup(func() {
		ctx := context.Background()
		keys, _ := e.c.Keys(ctx, e.prefix+"*").Result()
		if len(keys) > 0 {
			e.c.Del(ctx, keys...)
		}
		e.c.Close()
	})
	return e
}

// limiter returns a Limiter on this env's Redis and prefix. Its Redis timeout is generous:
// on a loaded test machine 50 ms can pass, and these tests are about the shared limits, not
// the fallback (TestRedisSlowFallsBack and TestRedisRecovery cover that).
func (e redisEnv) limiter(t testing.TB, clk *clock, edit func(*Options)) fixture {
	return newLimiter(t, clk, func(o *Options) {
		o.RedisURL = e.url
		o.KeyPrefix = e.prefix
		o.RedisTimeout = 5 * time.Second
		if edit != nil {
			edit(o)
		}
	})
}

// hget reads a float field of a subject's bucket.
func (e redisEnv) hget(t testing.TB, sub, field string) float64 {
	t.Helper()
	v, err := e.c.HGet(context.Background(), e.prefix+"s:"+sub, field).Float64()
	if err != nil {
		t.Fatalf("hget %s %s: %v", sub, field, err)
	}
	return v
}

// poll waits up to 5 s for cond.
func poll(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// hammerBoth admits r from two limiters at once.
func hammerBoth(t testing.TB, a, b *Limiter, r Request, g, attempts int) []*Ticket {
	var (
		mu  sync.Mutex
		out []*Ticket
		wg  sync.WaitGroup
	)
	for _, l := range []*Limiter{a, b} {
		wg.Go(func() {
			ts := hammer(t, l, r, g, attempts)
			mu.Lock()
			out = append(out, ts...)
			mu.Unlock()
		})
	}
	wg.Wait()
	return out
}

func redisTickets(ts []*Ticket) int {
	n := 0
	for _, tk := range ts {
		if tk.redis {
			n++
		}
	}
	return n
}

// TestRedisRequestsPerMinuteShared: two limiters on one Redis hold one request limit, exactly.
func TestRedisRequestsPerMinuteShared(t *testing.T) {
	env := newRedisEnv(t)
	clk := newClock()
	a, b := env.limiter(t, clk, nil), env.limiter(t, clk, nil)
	r := reqOf(0, keySubject(1, Limits{RequestsPerMinute: 100}), userSubject(1, Limits{RequestsPerMinute: 1000}))
	ts := hammerBoth(t, a.l, b.l, r, 4, 200)
	if len(ts) != 100 || redisTickets(ts) != 100 {
		t.Fatalf("burst: admitted %d (%d by Redis) of 400, want exactly 100", len(ts), redisTickets(ts))
	}
	// Three simulated minutes, one step per second.
	total := 0
	for range 180 {
		clk.Advance(time.Second)
		ts := hammerBoth(t, a.l, b.l, r, 2, 8)
		total += len(ts)
		settleAll(ts, 0)
	}
	if want := 300; total < want-1 || total > want+1 {
		t.Errorf("3 minutes at 100/min: admitted %d, want %d ± 1", total, want)
	}
	if a.fallbacks()+b.fallbacks() != 0 {
		t.Error("fallback counted with Redis up")
	}
	if got := a.rejections("key", "rpm") + b.rejections("key", "rpm"); got < 300 {
		t.Errorf("key rpm rejections %d", got)
	}
}

// TestRedisTokensPerMinuteShared: the stream case across two gateways: reservations hold
// the shared TPM limit; settlements return unused tokens to the shared bucket.
func TestRedisTokensPerMinuteShared(t *testing.T) {
	env := newRedisEnv(t)
	clk := newClock()
	a, b := env.limiter(t, clk, nil), env.limiter(t, clk, nil)
	sub := keySubject(9, Limits{TokensPerMinute: 10000})
	r := reqOf(500, sub)
	ts := hammerBoth(t, a.l, b.l, r, 5, 100)
	if len(ts) != 20 || a.fallbacks()+b.fallbacks() != 0 {
		t.Fatalf("admitted %d streams reserving 500 of 10000 (%d fallbacks), want 20", len(ts), a.fallbacks()+b.fallbacks())
	}
	settleAll(ts, 100)
	for _, tk := range ts {
		tk.Settle(100) // idempotent: no second refund
	}
	poll(t, "refunds to reach Redis", func() bool { return env.hget(t, "key:9", "t") >= 8000 })
	if got := env.hget(t, "key:9", "t"); got != 8000 {
		t.Errorf("bucket %v after 20 settlements of 400 unused tokens, want 8000", got)
	}
	ts = hammerBoth(t, a.l, b.l, r, 5, 100)
	if len(ts) != 16 {
		t.Errorf("after refunds admitted %d, want 16", len(ts))
	}
	// Accuracy over time: 3 simulated minutes, 100-token requests settled exactly.
	settleAll(ts, 500)
	clk.Advance(time.Minute) // refill to full
	r = reqOf(100, sub)
	total := 0
	for step := 0; step <= 180; step++ {
		attempts := 8 // more than the refill of one second (1.7 requests)
		if step == 0 {
			attempts = 120 // more than the burst (100 requests)
		}
		ts := hammerBoth(t, a.l, b.l, r, 2, attempts)
		total += len(ts)
		settleAll(ts, 100)
		clk.Advance(time.Second)
	}
	if want := 100 + 300; !within(total, want, 5) || total > want+1 {
		t.Errorf("admitted %d 100-token requests, want %d (within 5%%)", total, want)
	}
}

func TestRedisConcurrencyAndAllOrNothing(t *testing.T) {
	env := newRedisEnv(t)
	clk := newClock()
	a, b := env.limiter(t, clk, nil), env.limiter(t, clk, nil)
	key := keySubject(3, Limits{RequestsPerMinute: 10, MaxConcurrent: 100})
	user := userSubject(3, Limits{MaxConcurrent: 2})
	ts := hammerBoth(t, a.l, b.l, reqOf(0, key, user), 2, 10)
	if len(ts) != 2 {
		t.Fatalf("admitted %d with 2 concurrent slots", len(ts))
	}
	if got := a.rejections("user", "concurrency") + b.rejections("user", "concurrency"); got != 18 {
		t.Errorf("concurrency rejections %d, want 18", got)
	}
	// Refused requests charged nothing to the key: 8 of its 10 requests remain.
	if n := len(hammerBoth(t, a.l, b.l, reqOf(0, key), 1, 10)); n != 8 {
		t.Errorf("key admitted %d after refusals, want 8", n)
	}
	settleAll(ts, 0)
	poll(t, "slots released", func() bool {
		return env.c.ZCard(context.Background(), env.prefix+"c:user:3").Val() == 0
	})
}

// TestRedisLeaseExpiry: a gateway that dies holding a slot frees it after LeaseTTL; a live one
// keeps renewing it.
func TestRedisLeaseExpiry(t *testing.T) {
	env := newRedisEnv(t)
	clk := newClock()
	lease := func(o *Options) { o.LeaseTTL = 300 * time.Millisecond }
	a, b := env.limiter(t, clk, lease), env.limiter(t, clk, lease)
	sub := keySubject(4, Limits{MaxConcurrent: 1})
	zkey := env.prefix + "c:key:4"
	tk, err := a.l.Admit(context.Background(), reqOf(0, sub))
	if err != nil || !tk.redis {
		t.Fatalf("admit: %v", err)
	}
	// Live: after the clock moves 200 ms, the renewer pushes the expiry to now + 300 ms.
	clk.Advance(200 * time.Millisecond)
	want := float64(clk.Now().Add(300 * time.Millisecond).UnixMilli())
	poll(t, "lease renewal", func() bool { return env.c.ZScore(context.Background(), zkey, tk.id).Val() == want })
	clk.Advance(200 * time.Millisecond)
	if _, err := b.l.Admit(context.Background(), reqOf(0, sub)); err == nil {
		t.Fatal("a renewed slot was given away")
	}
	// Dead: a stops renewing (Close leaves open tickets to expire).
	a.l.Close()
	exp := time.UnixMilli(int64(env.c.ZScore(context.Background(), zkey, tk.id).Val()))
	clk.Advance(exp.Sub(clk.Now()) - time.Millisecond)
	if _, err := b.l.Admit(context.Background(), reqOf(0, sub)); err == nil {
		t.Fatal("slot given away before its lease expired")
	}
	clk.Advance(2 * time.Millisecond)
	if _, err := b.l.Admit(context.Background(), reqOf(0, sub)); err != nil {
		t.Errorf("lease expired, want admission: %v", err)
	}
}

func TestRedisBudgetSeededOnce(t *testing.T) {
	env := newRedisEnv(t)
	clk := newClock()
	var calls atomic.Int32
	seed := func(o *Options) {
		o.BudgetUsed = func(_ context.Context, scope string, id int64, start time.Time) (int64, error) {
			calls.Add(1)
			if scope != ScopeUser || id != 5 || !start.Equal(time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)) {
				t.Errorf("BudgetUsed(%s, %d, %s)", scope, id, start)
			}
			return 9000, nil
		}
	}
	a, b := env.limiter(t, clk, seed), env.limiter(t, clk, seed)
	sub := userSubject(5, Limits{MonthlyTokenBudget: 10000})
	ts := hammerBoth(t, a.l, b.l, reqOf(100, sub), 4, 40)
	if len(ts) != 10 {
		t.Errorf("admitted %d reserving 100 with 1000 left, want 10", len(ts))
	}
	if n := calls.Load(); n < 1 || n > 2 {
		t.Errorf("BudgetUsed called %d times, want once (twice at most when both race on the missing key)", n)
	}
	if m := env.hget(t, "user:5", "m"); m != 202603 {
		t.Errorf("budget month %v, want 202603", m)
	}
	if used := env.hget(t, "user:5", "u"); used != 10000 {
		t.Errorf("budget counter %v, want 10000", used)
	}
	ttl := env.c.TTL(context.Background(), env.prefix+"s:user:5").Val()
	if ttl < 23*time.Hour || ttl > 24*time.Hour {
		t.Errorf("subject hash ttl %s, want a day", ttl)
	}
	settleAll(ts, 40) // 60 unused × 10
	poll(t, "budget settlement", func() bool { return env.hget(t, "user:5", "u") == 9400 })
	_, err := a.l.Admit(context.Background(), reqOf(700, sub))
	if e := asAPI(t, err); e.Kind != apierr.QuotaExceeded || e.Code != "insufficient_quota" || !strings.Contains(e.Message, "used 9400") {
		t.Errorf("got %v", err)
	}
}

// TestRedisUnreachableFallsBack points the Limiter at a closed port.
func TestRedisUnreachableFallsBack(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	f := newLimiter(t, newClock(), func(o *Options) { o.RedisURL = "redis://" + addr + "/0" })
	ts := hammer(t, f.l, reqOf(0, keySubject(1, Limits{RequestsPerMinute: 10})), 2, 30)
	if len(ts) != 10 || redisTickets(ts) != 0 {
		t.Errorf("admitted %d (%d by Redis), want 10 by the local tier", len(ts), redisTickets(ts))
	}
	if got := f.fallbacks(); got != 30 {
		t.Errorf("fallbacks %d, want 30", got)
	}
	if n := f.log.count("quota redis unavailable"); n != 1 {
		t.Errorf("outage logged %d times, want once", n)
	}
	settleAll(ts, 0)
}

// TestRedisRecovery cuts Redis off behind a proxy, then restores it.
func TestRedisRecovery(t *testing.T) {
	env := newRedisEnv(t)
	u, err := url.Parse(env.url)
	if err != nil {
		t.Fatal(err)
	}
	p := newProxy(t, u.Host)
	u.Host = p.addr()
	clk := newClock()
	f := newLimiter(t, clk, func(o *Options) {
		o.RedisURL = u.String()
		o.KeyPrefix = env.prefix
		o.RedisTimeout = 2 * time.Second // a cut connection fails at once; a loaded machine is slow
		o.ProbeInterval = 20 * time.Millisecond
		o.LeaseShare = -1 // every request's round trip counts for the switch
	})
	r := reqOf(10, keySubject(1, Limits{RequestsPerMinute: 1000, TokensPerMinute: 100000}))
	admit := func() *Ticket {
		t.Helper()
		tk, err := f.l.Admit(context.Background(), r)
		if err != nil {
			t.Fatal(err)
		}
		return tk
	}
	if tk := admit(); !tk.redis {
		t.Fatal("first admission not decided by Redis")
	}
	p.setDown(true)
	for range 5 {
		if tk := admit(); tk.redis {
			t.Fatal("admitted by Redis while it is cut off")
		}
	}
	if f.fallbacks() != 5 || f.log.count("quota redis unavailable") != 1 {
		t.Errorf("fallbacks %d, outage logs %d; want 5 and 1", f.fallbacks(), f.log.count("quota redis unavailable"))
	}
	p.setDown(false)
	poll(t, "recovery", func() bool { return admit().redis })
	if n := f.log.count("quota redis recovered"); n != 1 {
		t.Errorf("recovery logged %d times, want once", n)
	}
}

// TestRedisCloseFlushesSettlements: settlements queued at Close reach Redis.
func TestRedisCloseFlushesSettlements(t *testing.T) {
	env := newRedisEnv(t)
	f := env.limiter(t, newClock(), nil)
	sub := keySubject(2, Limits{TokensPerMinute: 100000, MaxConcurrent: 50})
	ts := hammer(t, f.l, reqOf(1000, sub), 1, 50)
	if len(ts) != 50 {
		t.Fatalf("admitted %d", len(ts))
	}
	settleAll(ts, 0)
	if err := f.l.Close(); err != nil {
		t.Fatal(err)
	}
	if got := env.hget(t, "key:2", "t"); got != 100000 {
		t.Errorf("bucket %v after Close, want 100000 (all refunds flushed)", got)
	}
	if n := env.c.ZCard(context.Background(), env.prefix+"c:key:2").Val(); n != 0 {
		t.Errorf("%d leases left after Close", n)
	}
}

func TestRedisServerClock(t *testing.T) {
	env := newRedisEnv(t)
	f := env.limiter(t, nil, nil)
	if !f.l.redis.serverTime {
		t.Fatal("without Options.Now the scripts must use Redis's clock")
	}
	ts := hammer(t, f.l, reqOf(0, keySubject(1, Limits{RequestsPerMinute: 5})), 1, 8)
	if len(ts) != 5 || redisTickets(ts) != 5 {
		t.Errorf("admitted %d (%d by Redis), want 5", len(ts), redisTickets(ts))
	}
	rt, _ := env.c.HGet(context.Background(), env.prefix+"s:key:1", "rt").Int64()
	if d := time.Since(time.UnixMilli(rt)); d < -time.Minute || d > time.Minute {
		t.Errorf("bucket time %d is not Redis's clock", rt)
	}
}

// proxy forwards TCP to a target and can be cut off, or hold Redis's replies (a slow
// Redis: the commands arrive and run, their replies do not come back until released).
type proxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	down   bool
	gate   chan struct{} // non-nil: replies wait until it is closed
	conns  map[net.Conn]struct{}
	wg     sync.WaitGroup
}

// hold keeps every reply from now on until release is called (also at cleanup).
func (p *proxy) hold(t testing.TB) (release func()) {
	g := make(chan struct{})
	p.mu.Lock()
	p.gate = g
	p.mu.Unlock()
	var once sync.Once
	release = func() {
		once.Do(func() {
			p.mu.Lock()
			p.gate = nil
			p.mu.Unlock()
			close(g)
		})
	}
	t.Cleanup(release)
	return release
}

func newProxy(t testing.TB, target string) *proxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	p.wg.Go(p.serve)
	t.Cleanup(func() {
		ln.Close()
		p.setDown(true)
		p.wg.Wait()
	})
	return p
}

func (p *proxy) addr() string { return p.ln.Addr().String() }

func (p *proxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		if p.down {
			p.mu.Unlock()
			c.Close()
			continue
		}
		u, err := net.Dial("tcp", p.target)
		if err != nil {
			p.mu.Unlock()
			c.Close()
			continue
		}
		p.conns[c], p.conns[u] = struct{}{}, struct{}{}
		p.mu.Unlock()
		p.wg.Go(func() { io.Copy(u, c); u.Close() })
		p.wg.Go(func() {
			defer c.Close()
			buf := make([]byte, 32<<10)
			for {
				n, err := u.Read(buf)
				if n > 0 {
					p.mu.Lock()
					g := p.gate
					p.mu.Unlock()
					if g != nil {
						<-g
					}
					if _, err := c.Write(buf[:n]); err != nil {
						return
					}
				}
				if err != nil {
					return
				}
			}
		})
	}
}

func (p *proxy) setDown(down bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = down
	if down {
		for c := range p.conns {
			c.Close()
		}
		clear(p.conns)
	}
}

func TestRedisCancelledRequest(t *testing.T) {
	env := newRedisEnv(t)
	f := env.limiter(t, newClock(), nil)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := f.l.Admit(ctx, reqOf(0, keySubject(1, Limits{RequestsPerMinute: 5})))
	if e := asAPI(t, err); e.Kind != apierr.ClientClosed {
		t.Errorf("got %v, want ClientClosed", err)
	}
	if !f.l.RedisUp() || f.fallbacks() != 0 {
		t.Error("a cancelled request must not count as a Redis outage")
	}
}

func TestRedisMetricsRegistered(t *testing.T) {
	env := newRedisEnv(t)
	f := env.limiter(t, newClock(), nil)
	f.l.Admit(context.Background(), reqOf(0, keySubject(1, Limits{RequestsPerMinute: 1})))
	f.l.Admit(context.Background(), reqOf(0, keySubject(1, Limits{RequestsPerMinute: 1})))
	mfs, err := f.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, mf := range mfs {
		names = append(names, mf.GetName())
	}
	want := []string{
		"maas_gateway_quota_redis_batch_admissions",
		"maas_gateway_quota_redis_duration_seconds",
		"maas_gateway_quota_redis_fallback_total",
		"maas_gateway_quota_redis_reconciled_total",
		"maas_gateway_quota_redis_settle_dropped_total",
		"maas_gateway_quota_redis_up",
		"maas_gateway_quota_tier_switches_total",
		"maas_gateway_ratelimit_rejections_total",
	}
	if diff := cmp.Diff(want, names); diff != "" {
		t.Errorf("metric names (-want +got):\n%s", diff)
	}
	if got := f.rejections("key", "rpm"); got != 1 {
		t.Errorf("rejections{key,rpm} = %d", got)
	}
}

// TestRedisSlowFallsBack: a Redis that accepts connections but never answers costs one
// RedisTimeout, then the local tier decides without waiting on it.
func TestRedisSlowFallsBack(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var held sync.WaitGroup
	t.Cleanup(func() { ln.Close(); held.Wait() })
	held.Go(func() {
		var conns []net.Conn
		defer func() {
			for _, c := range conns {
				c.Close()
			}
		}()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns = append(conns, c) // read nothing, answer nothing
		}
	})
	f := newLimiter(t, newClock(), func(o *Options) { o.RedisURL = "redis://" + ln.Addr().String() + "/0" })
	r := reqOf(0, keySubject(1, Limits{RequestsPerMinute: 10}))
	// Each of the first FailuresToFallback admissions costs one RedisTimeout; then the
	// gateway is on the local tier.
	n := 0
	for ; f.l.RedisUp(); n++ {
		if n > DefaultOptions().FailuresToFallback {
			t.Fatalf("still on the Redis tier after %d timeouts", n)
		}
		begin := time.Now()
		tk, err := f.l.Admit(context.Background(), r)
		if err != nil || tk.redis {
			t.Fatalf("admit: %v", err)
		}
		if d := time.Since(begin); d > 500*time.Millisecond {
			t.Errorf("admission took %s with a 50ms Redis timeout", d)
		}
	}
	// A request stops waiting when its own timer fires, a moment before the admitter counts
	// its round trip as failed: RedisUp may read true once more just after it returns.
	if want := DefaultOptions().FailuresToFallback; n != want && n != want+1 {
		t.Errorf("switched to the local tier after %d timeouts, want %d", n, want)
	}
	begin := time.Now()
	for range 20 {
		f.l.Admit(context.Background(), r)
	}
	if d := time.Since(begin); d > 50*time.Millisecond {
		t.Errorf("20 admissions during the outage took %s: they must not wait on Redis", d)
	}
	if f.fallbacks() != n+20 || f.l.RedisUp() {
		t.Errorf("fallbacks %d, redis up %v", f.fallbacks(), f.l.RedisUp())
	}
}

// TestRedisBudgetNewMonth: a month starts a new counter, seeded again; a ticket admitted in
// the old month settles against the old month only.
func TestRedisBudgetNewMonth(t *testing.T) {
	env := newRedisEnv(t)
	clk := &clock{t: time.Date(2026, 3, 31, 23, 59, 59, 0, time.UTC)}
	var starts []time.Time
	var mu sync.Mutex
	f := env.limiter(t, clk, func(o *Options) {
		o.BudgetUsed = func(_ context.Context, _ string, _ int64, start time.Time) (int64, error) {
			mu.Lock()
			starts = append(starts, start)
			mu.Unlock()
			return 0, nil
		}
	})
	sub := userSubject(6, Limits{MonthlyTokenBudget: 1000})
	march, err := f.l.Admit(context.Background(), reqOf(600, sub))
	if err != nil {
		t.Fatal(err)
	}
	clk.Advance(2 * time.Second)
	april, err := f.l.Admit(context.Background(), reqOf(600, sub))
	if err != nil {
		t.Fatalf("new month: %v", err)
	}
	march.Settle(0)
	april.Settle(100)
	poll(t, "april settlement", func() bool { return env.hget(t, "user:6", "u") == 100 })
	want := []time.Time{time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC), time.Date(2026, 4, 1, 0, 0, 0, 0, time.UTC)}
	mu.Lock()
	defer mu.Unlock()
	if diff := cmp.Diff(want, starts); diff != "" {
		t.Errorf("BudgetUsed month starts (-want +got):\n%s", diff)
	}
}
