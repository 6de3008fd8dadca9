package admit

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/maas-platform/maas/pkg/apierr"
)

func TestAdmitLocalRefusesAtLimit(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name     string
		subject  Subject
		tokens   int64
		attempts int
		admitted int
		kind     apierr.Kind
		code     string
		reason   string
		message  string
	}{
		{
			name: "requests per minute", subject: keySubject(1, Limits{RequestsPerMinute: 60}), attempts: 80, admitted: 60,
			kind: apierr.RateLimited, code: "rate_limit_exceeded", reason: "rpm",
			message: "rate limit reached for requests per minute on this API key: limit 60",
		},
		{
			name: "tokens per minute", subject: userSubject(2, Limits{TokensPerMinute: 1000}), tokens: 100, attempts: 20, admitted: 10,
			kind: apierr.RateLimited, code: "rate_limit_exceeded", reason: "tpm",
			message: "rate limit reached for tokens per minute on this user: limit 1000, requested 100",
		},
		{
			name: "concurrency", subject: keySubject(3, Limits{MaxConcurrent: 3}), attempts: 10, admitted: 3,
			kind: apierr.RateLimited, code: "rate_limit_exceeded", reason: "concurrency",
			message: "rate limit reached for concurrent requests on this API key: limit 3",
		},
		{
			name: "monthly budget", subject: userSubject(4, Limits{MonthlyTokenBudget: 1000}), tokens: 300, attempts: 10, admitted: 3,
			kind: apierr.QuotaExceeded, code: "insufficient_quota", reason: "budget",
			message: "monthly token budget exhausted on this user: limit 1000, used 900, requested 300",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newLimiter(t, newClock(), nil)
			admitted := 0
			var last error
			for range tc.attempts {
				_, err := f.l.Admit(ctx, reqOf(tc.tokens, tc.subject))
				if err != nil {
					last = err
					continue
				}
				admitted++
			}
			if admitted != tc.admitted {
				t.Errorf("admitted %d of %d, want %d", admitted, tc.attempts, tc.admitted)
			}
			e := asAPI(t, last)
			got := []any{e.Kind, e.Code, e.Message}
			want := []any{tc.kind, tc.code, tc.message}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("rejection (-want +got):\n%s", diff)
			}
			if e.RetryAfter < time.Second {
				t.Errorf("RetryAfter %s, want at least 1s", e.RetryAfter)
			}
			if len(e.Headers()) != 1 || e.Kind.Status() != 429 {
				t.Errorf("want 429 with Retry-After, got %d %v", e.Kind.Status(), e.Headers())
			}
			if got, want := f.rejections(tc.subject.Scope, tc.reason), tc.attempts-tc.admitted; got != want {
				t.Errorf("rejections{%s,%s} = %d, want %d", tc.subject.Scope, tc.reason, got, want)
			}
		})
	}
}

func TestRetryAfter(t *testing.T) {
	clk := newClock()
	f := newLimiter(t, clk, nil)
	ctx := context.Background()
	sub := keySubject(1, Limits{RequestsPerMinute: 6, MonthlyTokenBudget: 10})
	for range 6 {
		if _, err := f.l.Admit(ctx, reqOf(1, sub)); err != nil {
			t.Fatal(err)
		}
	}
	_, err := f.l.Admit(ctx, reqOf(1, sub))
	if e := asAPI(t, err); e.RetryAfter != 10*time.Second {
		t.Errorf("rpm RetryAfter %s, want 10s (one request per 10 s)", e.RetryAfter)
	}
	clk.Advance(time.Hour)
	_, err = f.l.Admit(ctx, reqOf(10, sub))
	e := asAPI(t, err)
	// The clock is 2026-03-14 13:00 UTC: the budget renews at 2026-04-01 00:00 UTC.
	if want := time.Date(2026, 4, 1, 0, 0, 0, 0, time.UTC).Sub(clk.Now()); e.Kind != apierr.QuotaExceeded || e.RetryAfter != want {
		t.Errorf("budget: kind %v RetryAfter %s, want QuotaExceeded %s", e.Kind, e.RetryAfter, want)
	}
}

// TestAccuracyLocal drives one Limiter from many goroutines across five simulated minutes and
// checks the admitted totals against burst + rate × time.
func TestAccuracyLocal(t *testing.T) {
	const minutes = 5
	tests := []struct {
		name   string
		lim    Limits
		tokens int64
		want   int // requests a perfect limiter admits in the run
	}{
		{name: "rpm", lim: Limits{RequestsPerMinute: 120}, want: 120 * (1 + minutes)},
		{name: "tpm", lim: Limits{TokensPerMinute: 6000}, tokens: 100, want: 60 * (1 + minutes)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			clk := newClock()
			f := newLimiter(t, clk, nil)
			r := reqOf(tc.tokens, keySubject(1, tc.lim), userSubject(1, Limits{RequestsPerMinute: 1 << 20}))
			total := 0
			for step := 0; step <= minutes*60; step++ { // one step per simulated second
				attempts := 16 // more than the refill of one second
				if step == 0 {
					attempts = 400 // more than the burst
				}
				ts := hammer(t, f.l, r, 4, attempts)
				total += len(ts)
				settleAll(ts, tc.tokens)
				clk.Advance(time.Second)
			}
			if !within(total, tc.want, 5) || total > tc.want+1 {
				t.Errorf("admitted %d, want %d (within 5%%, never more than +1)", total, tc.want)
			}
		})
	}
}

// TestReservationPreventsOvershoot is the stream case: 100 streams ask for max_tokens 500 at
// once against 10,000 tokens per minute. Counting after the fact would admit them all (50,000
// tokens); reservations admit 20, and settling below the reservation returns the rest.
func TestReservationPreventsOvershoot(t *testing.T) {
	clk := newClock()
	f := newLimiter(t, clk, nil)
	sub := keySubject(1, Limits{TokensPerMinute: 10000})
	r := reqOf(500, sub)
	ts := hammer(t, f.l, r, 10, 100)
	if len(ts) != 20 {
		t.Fatalf("admitted %d streams reserving 500, want 20", len(ts))
	}
	settleAll(ts, 100) // each stream produced 100 tokens: 8,000 return to the bucket
	ts = hammer(t, f.l, r, 10, 100)
	if len(ts) != 16 {
		t.Errorf("after settling at 100 tokens, admitted %d more, want 16", len(ts))
	}
	// A stream that used more than it reserved puts the bucket in debt.
	settleAll(ts[:1], 1500)
	clk.Advance(6 * time.Second) // +1000 tokens; the bucket was 0, then -1000 by the debt
	if _, err := f.l.Admit(context.Background(), reqOf(1, sub)); err == nil {
		t.Error("admitted while the bucket is in debt")
	} else if e := asAPI(t, err); e.RetryAfter <= 0 {
		t.Errorf("RetryAfter %s", e.RetryAfter)
	}
}

func TestReservationAboveLimitNeedsFullBucket(t *testing.T) {
	clk := newClock()
	f := newLimiter(t, clk, nil)
	sub := keySubject(1, Limits{TokensPerMinute: 1000})
	tk, err := f.l.Admit(context.Background(), reqOf(4000, sub))
	if err != nil {
		t.Fatalf("a reservation above the limit is admitted with a full bucket: %v", err)
	}
	tk.Settle(3000) // 2000 above the 1000 charged: two minutes of debt
	clk.Advance(2*time.Minute - time.Second)
	if _, err := f.l.Admit(context.Background(), reqOf(1, sub)); err == nil {
		t.Error("admitted before the debt was repaid")
	}
	clk.Advance(2 * time.Second)
	if _, err := f.l.Admit(context.Background(), reqOf(1, sub)); err != nil {
		t.Errorf("debt repaid, want admission: %v", err)
	}
}

func TestSettleIdempotent(t *testing.T) {
	f := newLimiter(t, newClock(), nil)
	ctx := context.Background()
	sub := keySubject(1, Limits{TokensPerMinute: 1000, MaxConcurrent: 2})
	a, err := f.l.Admit(ctx, reqOf(500, sub))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.l.Admit(ctx, reqOf(500, sub)); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() { a.Settle(0) })
	}
	wg.Wait()
	// One refund of 500 and one slot came back, not eight.
	if _, err := f.l.Admit(ctx, reqOf(500, sub)); err != nil {
		t.Fatalf("after settle: %v", err)
	}
	if _, err := f.l.Admit(ctx, reqOf(1, keySubject(1, Limits{TokensPerMinute: 1000}))); err == nil {
		t.Error("bucket refunded more than once")
	}
	if _, err := f.l.Admit(ctx, reqOf(0, keySubject(1, Limits{MaxConcurrent: 2}))); err == nil {
		t.Error("concurrency slot released more than once")
	}
	var nilTicket *Ticket
	nilTicket.Settle(1) // must not panic
}

func TestBudgetSeededOnce(t *testing.T) {
	clk := newClock()
	var calls atomic.Int32
	var gotStart atomic.Value
	fail := atomic.Bool{}
	f := newLimiter(t, clk, func(o *Options) {
		o.BudgetUsed = func(_ context.Context, scope string, id int64, start time.Time) (int64, error) {
			calls.Add(1)
			gotStart.Store(start)
			if fail.Load() {
				return 0, errors.New("database down")
			}
			if scope != ScopeUser || id != 7 {
				t.Errorf("BudgetUsed(%s, %d)", scope, id)
			}
			return 900, nil
		}
	})
	ctx := context.Background()
	sub := userSubject(7, Limits{MonthlyTokenBudget: 1000})
	a, err := f.l.Admit(ctx, reqOf(50, sub))
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.l.Admit(ctx, reqOf(100, sub))
	if e := asAPI(t, err); e.Kind != apierr.QuotaExceeded || !strings.Contains(e.Message, "used 950") {
		t.Fatalf("got %v, want insufficient_quota with used 950", err)
	}
	a.Settle(10) // 960 → 910
	if _, err := f.l.Admit(ctx, reqOf(90, sub)); err != nil {
		t.Errorf("after settle: %v", err)
	}
	if n := calls.Load(); n != 1 {
		t.Errorf("BudgetUsed called %d times, want 1", n)
	}
	// A new month is seeded again, from its first instant.
	clk.Advance(20 * 24 * time.Hour)
	if _, err := f.l.Admit(ctx, reqOf(90, sub)); err != nil {
		t.Errorf("new month: %v", err)
	}
	if n, s := calls.Load(), gotStart.Load().(time.Time); n != 2 || !s.Equal(time.Date(2026, 4, 1, 0, 0, 0, 0, time.UTC)) {
		t.Errorf("BudgetUsed calls %d, month start %s", n, s)
	}
	// A failing seed admits without the budget and is retried after 5 s, not per request.
	fail.Store(true)
	clk.Advance(31 * 24 * time.Hour)
	for range 3 {
		if _, err := f.l.Admit(ctx, reqOf(5000, sub)); err != nil {
			t.Errorf("seed failure must admit: %v", err)
		}
	}
	if n := calls.Load(); n != 3 {
		t.Errorf("BudgetUsed calls %d, want 3 (failure cached 5 s)", n)
	}
	fail.Store(false)
	clk.Advance(6 * time.Second)
	if _, err := f.l.Admit(ctx, reqOf(5000, sub)); err == nil {
		t.Error("after a successful seed the budget applies again")
	}
}

func TestAllOrNothing(t *testing.T) {
	f := newLimiter(t, newClock(), nil)
	ctx := context.Background()
	key := keySubject(1, Limits{RequestsPerMinute: 10, MaxConcurrent: 100})
	user := userSubject(1, Limits{RequestsPerMinute: 2})
	for range 5 {
		f.l.Admit(ctx, reqOf(0, key, user))
	}
	if got := f.rejections("user", "rpm"); got != 3 {
		t.Errorf("user rpm rejections %d, want 3", got)
	}
	// The key paid for 2 requests only: 8 left.
	admitted := len(hammer(t, f.l, reqOf(0, key), 1, 20))
	if admitted != 8 {
		t.Errorf("key admitted %d, want 8 (refused requests must not charge it)", admitted)
	}
}

func TestLimitsChangeApply(t *testing.T) {
	f := newLimiter(t, newClock(), nil)
	ctx := context.Background()
	for range 3 {
		if _, err := f.l.Admit(ctx, reqOf(0, keySubject(1, Limits{RequestsPerMinute: 100}))); err != nil {
			t.Fatal(err)
		}
	}
	// Lowered to 2 per minute: the bucket is capped to the new burst.
	n := len(hammer(t, f.l, reqOf(0, keySubject(1, Limits{RequestsPerMinute: 2})), 1, 10))
	if n != 2 {
		t.Errorf("after lowering the limit admitted %d, want 2", n)
	}
	// Limit removed: unlimited.
	if n := len(hammer(t, f.l, reqOf(0, keySubject(1, Limits{})), 1, 10)); n != 10 {
		t.Errorf("unlimited admitted %d", n)
	}
}

func TestUnknownScope(t *testing.T) {
	f := newLimiter(t, nil, nil)
	_, err := f.l.Admit(context.Background(), reqOf(0, Subject{Scope: "team", ID: 1, Limits: Limits{MaxConcurrent: 1}}))
	if e := asAPI(t, err); e.Kind != apierr.Internal {
		t.Errorf("got %v", err)
	}
}

func TestEvictIdle(t *testing.T) {
	clk := newClock()
	f := newLimiter(t, clk, nil)
	ctx := context.Background()
	busy, err := f.l.Admit(ctx, reqOf(10, keySubject(1, Limits{MaxConcurrent: 1})))
	if err != nil {
		t.Fatal(err)
	}
	idle, err := f.l.Admit(ctx, reqOf(10, keySubject(2, Limits{TokensPerMinute: 100})))
	if err != nil {
		t.Fatal(err)
	}
	idle.Settle(10)
	clk.Advance(11 * time.Minute)
	now := clk.Now()
	if n := f.l.states.evict(now, now.Add(-10*time.Minute).UnixNano()); n != 1 {
		t.Errorf("evicted %d, want 1 (the subject with a request in flight stays)", n)
	}
	busy.Settle(10)
	if _, err := f.l.Admit(ctx, reqOf(10, keySubject(1, Limits{MaxConcurrent: 1}))); err != nil {
		t.Errorf("slot released after eviction pass: %v", err)
	}
	if n := f.l.states.len(); n != 1 {
		t.Errorf("states %d, want 1", n)
	}
}

func TestUnlimitedIsFree(t *testing.T) {
	f := newLimiter(t, nil, nil)
	tk, err := f.l.Admit(context.Background(), reqOf(10, keySubject(1, Limits{}), userSubject(1, Limits{})))
	if err != nil || tk == nil {
		t.Fatalf("got %v %v", tk, err)
	}
	tk.Settle(5)
	tk.Settle(5)
	if n := f.l.states.len(); n != 0 {
		t.Errorf("unlimited subjects kept state: %d", n)
	}
}
