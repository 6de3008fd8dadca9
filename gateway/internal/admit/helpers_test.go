package admit

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/maas-platform/maas/pkg/apierr"
)

// clock is a settable time source shared by limiters under test.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock {
	return &clock{t: time.Date(2026, 3, 14, 12, 0, 0, 0, time.UTC)}
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// logs records log messages.
type logs struct {
	mu   sync.Mutex
	msgs []string
}

func (h *logs) Enabled(context.Context, slog.Level) bool { return true }
func (h *logs) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *logs) WithGroup(string) slog.Handler            { return h }
func (h *logs) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	h.msgs = append(h.msgs, r.Message)
	h.mu.Unlock()
	return nil
}

// count returns how many messages contain s.
func (h *logs) count(s string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, m := range h.msgs {
		if strings.Contains(m, s) {
			n++
		}
	}
	return n
}

type fixture struct {
	l   *Limiter
	reg *prometheus.Registry
	log *logs
}

func newLimiter(t testing.TB, clk *clock, edit func(*Options)) fixture {
	t.Helper()
	f := fixture{reg: prometheus.NewRegistry(), log: &logs{}}
	o := DefaultOptions()
	o.Registerer = f.reg
	o.Logger = slog.New(f.log)
	if clk != nil {
		o.Now = clk.Now
	}
	if edit != nil {
		edit(&o)
	}
	l, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	f.l = l
	return f
}

func (f fixture) rejections(scope, reason string) int {
	return int(testutil.ToFloat64(f.l.m.rejections[scopeIndex(scope)][reasonIndex(reason)]))
}

func (f fixture) fallbacks() int { return int(testutil.ToFloat64(f.l.m.fallback)) }

func scopeIndex(s string) int {
	for i, n := range scopeNames {
		if n == s {
			return i
		}
	}
	panic(s)
}

func reasonIndex(s string) int {
	for i, n := range reasonNames {
		if n == s {
			return i
		}
	}
	panic(s)
}

func keySubject(id int64, lim Limits) Subject  { return Subject{Scope: ScopeKey, ID: id, Limits: lim} }
func userSubject(id int64, lim Limits) Subject { return Subject{Scope: ScopeUser, ID: id, Limits: lim} }

// reqOf is a request charged to subjects.
func reqOf(tokens int64, ss ...Subject) Request { return Request{Subjects: ss, Tokens: tokens} }

// asAPI returns err as *apierr.Error or fails.
func asAPI(t testing.TB, err error) *apierr.Error {
	t.Helper()
	var e *apierr.Error
	if !errors.As(err, &e) {
		t.Fatalf("error %v (%T) is not an *apierr.Error", err, err)
	}
	return e
}

// hammer runs attempts admissions of r over g goroutines and returns the admitted tickets.
func hammer(t testing.TB, l *Limiter, r Request, g, attempts int) []*Ticket {
	t.Helper()
	var (
		mu  sync.Mutex
		out []*Ticket
		wg  sync.WaitGroup
	)
	per := attempts / g
	for range g {
		wg.Go(func() {
			for range per {
				tk, err := l.Admit(context.Background(), r)
				if err != nil {
					var e *apierr.Error
					if !errors.As(err, &e) || (e.Kind != apierr.RateLimited && e.Kind != apierr.QuotaExceeded) {
						t.Errorf("admit: unexpected error %v", err)
					}
					continue
				}
				mu.Lock()
				out = append(out, tk)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return out
}

func settleAll(ts []*Ticket, actual int64) {
	for _, tk := range ts {
		tk.Settle(actual)
	}
}

// within reports whether got is within pct percent of want.
func within(got, want int, pct float64) bool {
	d := float64(got - want)
	if d < 0 {
		d = -d
	}
	return d <= float64(want)*pct/100
}
