package admit

import (
	"context"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/maas-platform/maas/gateway/internal/panics"
)

// proxied returns a Limiter that reaches env's Redis through a proxy the test controls.
func proxied(t *testing.T, env redisEnv, clk *clock, edit func(*Options)) (fixture, *proxy) {
	t.Helper()
	u, err := url.Parse(env.url)
	if err != nil {
		t.Fatal(err)
	}
	p := newProxy(t, u.Host)
	u.Host = p.addr()
	f := newLimiter(t, clk, func(o *Options) {
		o.RedisURL = u.String()
		o.KeyPrefix = env.prefix
		o.RedisTimeout = 2 * time.Second // a loaded test machine is slow; held replies never come
		o.ProbeInterval = 10 * time.Millisecond
		if edit != nil {
			edit(o)
		}
	})
	return f, p
}

// record names the records hash of a ticket admitted (or tried) on the Redis tier.
func record(tk *Ticket) string { return tk.keys[len(tk.keys)-1] }

func (f fixture) switches(tier string) int {
	return int(testutil.ToFloat64(f.l.m.switches.WithLabelValues(tier)))
}

// TestRedisLateReplyUndone: a reply that arrives after the timeout (the script ran in Redis)
// leaves nothing charged in Redis: the request was decided, and charged, by the local tier;
// its concurrency slot is free at once, its request, tokens and budget are refunded. One slow
// reply does not switch the gateway to the local tier.
func TestRedisLateReplyUndone(t *testing.T) {
	env := newRedisEnv(t)
	clk := newClock()
	f, p := proxied(t, env, clk, func(o *Options) {
		o.RedisTimeout = time.Second
		o.BudgetUsed = func(context.Context, string, int64, time.Time) (int64, error) { return 0, nil }
	})
	sub := userSubject(7, Limits{RequestsPerMinute: 10, TokensPerMinute: 1000, MaxConcurrent: 1, MonthlyTokenBudget: 100000})
	ctx := context.Background()
	// A first request seeds the budget counter and leaves the subject's hash in place.
	tk, err := f.l.Admit(ctx, reqOf(100, sub))
	if err != nil || !tk.redis {
		t.Fatalf("first admission: %v (redis %v)", err, tk != nil && tk.redis)
	}
	tk.Settle(100)
	poll(t, "first settlement", func() bool { return !env.c.HExists(ctx, record(tk), tk.id).Val() })
	zkey := env.prefix + "c:user:7"
	before := map[string]float64{"r": env.hget(t, "user:7", "r"), "t": env.hget(t, "user:7", "t"), "u": env.hget(t, "user:7", "u")}
	if before["r"] != 9 || before["t"] != 900 || before["u"] != 100 {
		t.Fatalf("after one request: %v", before)
	}

	release := p.hold(t)
	late, err := f.l.Admit(ctx, reqOf(100, sub))
	release()
	if err != nil || late.redis {
		t.Fatalf("admission with a held reply: %v (redis %v), want the local tier", err, late != nil && late.redis)
	}
	if !f.l.RedisUp() {
		t.Fatal("one slow reply switched the gateway to the local tier")
	}
	// The script ran: it charged and took the slot. The undo gives everything back.
	poll(t, "the late admission to be undone", func() bool {
		return env.c.HGet(ctx, record(late), late.id).Val() == "x" && env.c.ZCard(ctx, zkey).Val() == 0
	})
	for field, want := range before {
		if got := env.hget(t, "user:7", field); got != want {
			t.Errorf("field %s = %v after the undo, want %v (charged once, locally)", field, got, want)
		}
	}
	if n := int(testutil.ToFloat64(f.l.m.reconciled)); n != 1 {
		t.Errorf("reconciled %d, want 1", n)
	}
	// The next request is decided by Redis, and the single slot is free there.
	next, err := f.l.Admit(ctx, reqOf(100, sub))
	if err != nil || !next.redis {
		t.Fatalf("after the late reply: %v (redis %v), want admitted by Redis", err, next != nil && next.redis)
	}
	next.Settle(100)
	late.Settle(100)
	if f.fallbacks() != 1 || f.switches(tierLocal) != 0 {
		t.Errorf("fallbacks %d, switches to local %d; want 1 and 0", f.fallbacks(), f.switches(tierLocal))
	}
}

// TestRedisHysteresis: the gateway leaves Redis only after FailuresToFallback failed round
// trips in a row, and comes back after ProbesToRecover good probes; each switch is logged and
// counted once.
func TestRedisHysteresis(t *testing.T) {
	env := newRedisEnv(t)
	f, p := proxied(t, env, newClock(), func(o *Options) {
		o.FailuresToFallback = 3
		o.ProbesToRecover = 2
		o.LeaseShare = -1 // every request's round trip counts for the switch
	})
	r := reqOf(10, keySubject(1, Limits{RequestsPerMinute: 1000}))
	admit := func() *Ticket {
		t.Helper()
		tk, err := f.l.Admit(context.Background(), r)
		if err != nil {
			t.Fatal(err)
		}
		return tk
	}
	if !admit().redis {
		t.Fatal("first admission not decided by Redis")
	}
	p.setDown(true)
	for i := 1; i <= 3; i++ {
		if tk := admit(); tk.redis {
			t.Fatalf("failure %d: admitted by Redis while it is cut off", i)
		}
		if up := f.l.RedisUp(); up != (i < 3) {
			t.Fatalf("after %d failures redis up = %v", i, up)
		}
	}
	if f.switches(tierLocal) != 1 || f.log.count("quota redis unavailable") != 1 {
		t.Errorf("switches to local %d, logged %d; want 1 and 1", f.switches(tierLocal), f.log.count("quota redis unavailable"))
	}
	for range 5 {
		admit()
	}
	if f.fallbacks() != 8 || f.switches(tierLocal) != 1 {
		t.Errorf("fallbacks %d, switches %d; want 8 and 1", f.fallbacks(), f.switches(tierLocal))
	}
	p.setDown(false)
	poll(t, "recovery", f.l.RedisUp)
	if !admit().redis {
		t.Error("not back on Redis after recovery")
	}
	if f.switches(tierRedis) != 1 || f.log.count("quota redis recovered") != 1 {
		t.Errorf("switches to redis %d, logged %d; want 1 and 1", f.switches(tierRedis), f.log.count("quota redis recovered"))
	}
}

// TestRedisPipelinedExact: admissions of concurrent requests share round trips, and a limit
// holds exactly: 640 concurrent attempts on a limit of 50 requests per minute admit 50.
func TestRedisPipelinedExact(t *testing.T) {
	env := newRedisEnv(t)
	f := env.limiter(t, newClock(), nil)
	ts := hammer(t, f.l, reqOf(0, keySubject(11, Limits{RequestsPerMinute: 50})), 64, 640)
	if len(ts) != 50 || redisTickets(ts) != 50 || f.fallbacks() != 0 {
		t.Fatalf("admitted %d (%d by Redis, %d fallbacks), want exactly 50 by Redis", len(ts), redisTickets(ts), f.fallbacks())
	}
	var m dto.Metric
	if err := f.l.m.batch.Write(&m); err != nil {
		t.Fatal(err)
	}
	rounds, admissions := m.GetHistogram().GetSampleCount(), m.GetHistogram().GetSampleSum()
	if admissions != 640 {
		t.Errorf("admissions sent %v, want 640", admissions)
	}
	if float64(rounds) > admissions/2 {
		t.Errorf("%d round trips for %v admissions from 64 goroutines: not pipelined", rounds, admissions)
	}
	settleAll(ts, 0)
}

// TestRedisScriptsExactlyOnce: an admission sent twice with its id charges once; a settlement
// sent twice corrects once; an undo that reaches Redis before its admission makes the
// admission charge nothing, and an undo sent twice refunds once.
func TestRedisScriptsExactlyOnce(t *testing.T) {
	env := newRedisEnv(t)
	clk := newClock()
	f := env.limiter(t, clk, nil)
	r := f.l.redis
	ctx := context.Background()
	sub := keySubject(12, Limits{RequestsPerMinute: 10, TokensPerMinute: 1000, MaxConcurrent: 5})
	zkey := env.prefix + "c:key:12"
	ticket := func() *Ticket { // a ticket as Admit builds it, not yet sent
		tk := &Ticket{l: f.l, reserved: 100, n: 1}
		tk.inline[0] = charge{st: f.l.states.get(subjectKey{scope: scopeKey, id: 12}), limits: sub.Limits, tpm: -1}
		return tk
	}

	tk := ticket()
	keys, args := r.request(tk, clk.Now())
	for i := range 2 {
		res, err := r.call(ctx, keys, args)
		if err != nil || len(res) != 2 || res[0] != 0 {
			t.Fatalf("admission %d: %v %v", i, res, err)
		}
	}
	if got := []float64{env.hget(t, "key:12", "r"), env.hget(t, "key:12", "t")}; got[0] != 9 || got[1] != 900 {
		t.Fatalf("after one admission sent twice: rpm %v tpm %v, want 9 900", got[0], got[1])
	}
	// Settle it twice (a batch sent again after a lost acknowledgement).
	tk.inline[0].tpm, tk.redis, tk.hasLease = 100, true, true
	tk.month = f.l.monthOf(clk.Now()).idx
	op := settleOp{t: tk, actual: 10}
	if err := r.flush([]settleOp{op, op}); err != nil {
		t.Fatal(err)
	}
	if err := r.flush([]settleOp{op}); err != nil {
		t.Fatal(err)
	}
	if got := env.hget(t, "key:12", "t"); got != 990 {
		t.Errorf("tpm %v after three settlements of 10 of 100 reserved, want 990 (refunded once)", got)
	}
	if n := env.c.ZCard(ctx, zkey).Val(); n != 0 {
		t.Errorf("%d leases after settlement", n)
	}

	// An undo that arrives first: the admission, when it comes, charges nothing.
	early := ticket()
	keys, args = r.request(early, clk.Now())
	if err := r.flush([]settleOp{{keys: keys, args: append([]any(nil), args...)}}); err != nil {
		t.Fatal(err)
	}
	res, err := r.call(ctx, keys, args)
	if err != nil || len(res) != 1 || res[0] != 4 {
		t.Errorf("admission after its undo: %v %v, want {4}", res, err)
	}
	if got := env.hget(t, "key:12", "r"); got != 9 {
		t.Errorf("rpm %v after an undone admission, want 9 (not charged)", got)
	}

	// An admission undone twice is refunded once.
	lateTk := ticket()
	keys, args = r.request(lateTk, clk.Now())
	if res, err := r.call(ctx, keys, args); err != nil || res[0] != 0 {
		t.Fatalf("admission: %v %v", res, err)
	}
	if got := env.hget(t, "key:12", "r"); got != 8 {
		t.Fatalf("rpm %v after a second admission, want 8", got)
	}
	undo := settleOp{keys: keys, args: append([]any(nil), args...)}
	if err := r.flush([]settleOp{undo, undo}); err != nil {
		t.Fatal(err)
	}
	got := []float64{env.hget(t, "key:12", "r"), env.hget(t, "key:12", "t")}
	if got[0] != 9 || got[1] != 990 {
		t.Errorf("after an undo sent twice: rpm %v tpm %v, want 9 990 (refunded once)", got[0], got[1])
	}
	if n := env.c.ZCard(ctx, zkey).Val(); n != 0 {
		t.Errorf("%d leases after the undo", n)
	}
}

// redisCalls returns how many commands Redis has run so far (scripts and the calls inside
// them), from INFO commandstats.
func redisCalls(t *testing.T, env redisEnv) int {
	t.Helper()
	info, err := env.c.Info(context.Background(), "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	total := 0
	for _, line := range strings.Split(info, "\n") {
		_, rest, ok := strings.Cut(line, ":calls=")
		if !ok || strings.HasPrefix(line, "cmdstat_info") {
			continue
		}
		n, err := strconv.Atoi(rest[:strings.IndexByte(rest, ',')])
		if err != nil {
			t.Fatalf("commandstats line %q", line)
		}
		total += n
	}
	return total
}

// TestRedisCallsPerRequest: the cost that machine noise does not move. Under load (64
// requests at once, 2,000 keys of one user, every limit set as make bench sets them), a
// request costs Redis about 5 commands, admission and settlement included, against 17 when
// every request ran its own scripts and records were keys of their own: most of it is the
// key's own hash, read and written once each way.
//
// With leases (the default) the same load costs Redis a few grants per key: each of the 2,000
// keys takes one grant in the warm-up and gives it back at Close (counted here, though a
// lease lives as long as its key is used); the user takes a few. Until Close, the 4,096
// requests cost Redis almost nothing.
func TestRedisCallsPerRequest(t *testing.T) {
	t.Run("exact", func(t *testing.T) { testRedisCallsPerRequest(t, -1, 8, 8) })
	t.Run("leased", func(t *testing.T) { testRedisCallsPerRequest(t, 0, 0.1, 4) })
}

func testRedisCallsPerRequest(t *testing.T, share, mostOpen, most float64) {
	env := newRedisEnv(t)
	f := env.limiter(t, nil, func(o *Options) { o.LeaseShare = share })
	ctx := context.Background()
	user := Limits{RequestsPerMinute: 100000000, TokensPerMinute: 2000000000, MaxConcurrent: 100000, MonthlyTokenBudget: 1 << 50}
	var next atomic.Int64
	req := func() Request {
		k := next.Add(1)%2000 + 1
		return reqOf(68, keySubject(k, Limits{RequestsPerMinute: 10000000, TokensPerMinute: 1000000000}), userSubject(1, user))
	}
	// First uses (each key's hash gets its expiry once a day) are not the steady state.
	for range 2000 { // every key once
		tk, err := f.l.Admit(ctx, req())
		if err != nil {
			t.Fatal(err)
		}
		tk.Settle(60)
	}
	poll(t, "warm-up settlements", func() bool { return len(f.l.redis.settleCh) == 0 })
	before := redisCalls(t, env)
	cpu0, rcpu0 := selfCPU(), redisCPU(t, env)
	const n = 4096
	var wg sync.WaitGroup
	for range 64 {
		wg.Go(func() {
			for range n / 64 {
				tk, err := f.l.Admit(ctx, req())
				if err != nil {
					t.Error(err)
					return
				}
				tk.Settle(60)
			}
		})
	}
	wg.Wait()
	perOpen := float64(redisCalls(t, env)-before) / n
	f.l.Close() // flushes the settlements
	per := float64(redisCalls(t, env)-before) / n
	t.Logf("per request before Close: %.2f Redis commands", perOpen)
	if share >= 0 && perOpen > mostOpen {
		t.Errorf("%.2f Redis commands per request before Close, want at most %g", perOpen, mostOpen)
	}
	t.Logf("per request: %.2f Redis commands, CPU %.1f µs in this process (admissions, settlements, test) and %.1f µs in Redis; %d fallbacks",
		per, float64((selfCPU()-cpu0).Microseconds())/n, float64((redisCPU(t, env)-rcpu0).Microseconds())/n, f.fallbacks())
	if f.fallbacks() != 0 {
		t.Fatalf("%d fallbacks", f.fallbacks())
	}
	if per > most {
		t.Errorf("%.1f Redis commands per request, want at most %g (admissions and settlements share their subjects' reads and writes)", per, most)
	}
}

// TestRedisAdmitterPanic: a panic in the admitter is recorded (maas_gateway_panics_total
// {where="admit"}), costs its batch the Redis decision (decided locally, undone in Redis),
// and the admitter goes on.
func TestRedisAdmitterPanic(t *testing.T) {
	env := newRedisEnv(t)
	rec, err := panics.New(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	f := env.limiter(t, newClock(), func(o *Options) { o.Panics = rec; o.AdmitPipelines = 1 })
	var once atomic.Bool
	f.l.redis.beforeSend = func() {
		if once.CompareAndSwap(false, true) {
			panic("injected")
		}
	}
	r := reqOf(0, keySubject(13, Limits{RequestsPerMinute: 10}))
	tk, err := f.l.Admit(context.Background(), r)
	if err != nil || tk.redis {
		t.Fatalf("admission through a panicking admitter: %v (redis %v), want the local tier", err, tk != nil && tk.redis)
	}
	if n := rec.Count(panics.Admit); n != 1 {
		t.Errorf("panics recorded %v, want 1", n)
	}
	if tk, err := f.l.Admit(context.Background(), r); err != nil || !tk.redis {
		t.Errorf("after the panic: %v, want admitted by Redis", err)
	}
}
