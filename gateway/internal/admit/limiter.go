package admit

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/maas-platform/maas/gateway/internal/panics"
	"github.com/maas-platform/maas/pkg/apierr"
)

// Limits of one subject; a zero field means unlimited.
type Limits struct {
	RequestsPerMinute  int
	TokensPerMinute    int
	MaxConcurrent      int
	MonthlyTokenBudget int64
}

func (l Limits) unlimited() bool {
	return l.RequestsPerMinute <= 0 && l.TokensPerMinute <= 0 && l.MaxConcurrent <= 0 && l.MonthlyTokenBudget <= 0
}

// Subject is one party a request is charged to.
type Subject struct {
	Scope  string // "key" or "user"
	ID     int64
	Limits Limits
}

// Request asks to admit one request, charged to every subject (all or nothing).
type Request struct {
	Subjects []Subject
	Tokens   int64 // reservation: prompt estimate + max output tokens
}

// Scope names accepted in Subject.Scope.
const (
	ScopeKey  = "key"
	ScopeUser = "user"
)

// Options configure a Limiter. Zero durations take the defaults of DefaultOptions.
type Options struct {
	RedisURL   string // "" = local tier only
	Logger     *slog.Logger
	Registerer prometheus.Registerer // nil = metrics are kept but not registered
	Now        func() time.Time      // nil = time.Now
	// BudgetUsed returns the tokens a subject already used in the month starting at monthStart
	// (the gateway sums usage_records); called when a subject's budget counter is first needed.
	// nil = every budget starts at zero.
	BudgetUsed func(ctx context.Context, scope string, id int64, monthStart time.Time) (int64, error)

	// Panics records panics recovered in the background loops (nil: recovered, not recorded).
	Panics *panics.Recorder

	// RedisTimeout bounds each Redis round trip (dial, read, write); past it the request is
	// decided by the local tier, and its admission in Redis, if the script ran, is undone.
	RedisTimeout time.Duration
	// KeyPrefix is put before every Redis key this package writes.
	KeyPrefix string
	// LeaseTTL is how long a concurrency slot held in Redis survives without renewal: the
	// longest a slot of a gateway that died stays taken. Live slots are renewed every LeaseTTL/3.
	LeaseTTL time.Duration
	// ProbeInterval is how often an unreachable Redis is probed for recovery.
	ProbeInterval time.Duration
	// FailuresToFallback is how many Redis round trips in a row must fail (error or
	// RedisTimeout) before every request goes to the local tier. A request whose own round
	// trip failed is decided locally either way.
	FailuresToFallback int
	// ProbesToRecover is how many probes in a row must succeed before Redis decides again.
	ProbesToRecover int
	// ReservationTTL is how long Redis remembers an admission for its settlement: a request
	// still running after it is settled without its refund (its reservation stays charged).
	ReservationTTL time.Duration
	// AdmitBatch bounds the admissions sent in one Redis round trip.
	AdmitBatch int
	// AdmitPipelines is how many admission round trips may be in flight at once: requests
	// that arrive while they all are go together in the next one.
	AdmitPipelines int
	// LeaseShare is the share of each limit of a subject a gateway leases from Redis at once
	// and then decides in memory (see lease.go): 1/60 by default; negative = no leases, every
	// request decided in Redis. Larger shares cost Redis less and loosen the global bound.
	LeaseShare float64
	// IdleEviction drops the in-memory state of a subject unused this long (its buckets full,
	// nothing in flight).
	IdleEviction time.Duration
}

// DefaultOptions returns the options used in production, without Redis.
func DefaultOptions() Options {
	return Options{
		RedisTimeout:  50 * time.Millisecond,
		KeyPrefix:     "maas:quota:",
		LeaseTTL:      30 * time.Second,
		ProbeInterval: time.Second,
		IdleEviction:  10 * time.Minute,

		FailuresToFallback: 3,
		ProbesToRecover:    3,
		ReservationTTL:     time.Hour,
		AdmitBatch:         128,
		AdmitPipelines:     2,
		LeaseShare:         1.0 / 60,
	}
}

func (o *Options) validate() error {
	d := DefaultOptions()
	if o.RedisTimeout <= 0 {
		o.RedisTimeout = d.RedisTimeout
	}
	if o.KeyPrefix == "" {
		o.KeyPrefix = d.KeyPrefix
	}
	if o.LeaseTTL <= 0 {
		o.LeaseTTL = d.LeaseTTL
	}
	if o.LeaseTTL < 3*time.Millisecond {
		return fmt.Errorf("admit: lease ttl %s is too short", o.LeaseTTL)
	}
	if o.ProbeInterval <= 0 {
		o.ProbeInterval = d.ProbeInterval
	}
	if o.IdleEviction <= 0 {
		o.IdleEviction = d.IdleEviction
	}
	if o.FailuresToFallback <= 0 {
		o.FailuresToFallback = d.FailuresToFallback
	}
	if o.ProbesToRecover <= 0 {
		o.ProbesToRecover = d.ProbesToRecover
	}
	if o.ReservationTTL <= 0 {
		o.ReservationTTL = d.ReservationTTL
	}
	if o.ReservationTTL < o.LeaseTTL {
		return fmt.Errorf("admit: reservation ttl %s is shorter than the lease ttl %s", o.ReservationTTL, o.LeaseTTL)
	}
	if o.AdmitBatch <= 0 {
		o.AdmitBatch = d.AdmitBatch
	}
	if o.AdmitPipelines <= 0 {
		o.AdmitPipelines = d.AdmitPipelines
	}
	if o.LeaseShare == 0 {
		o.LeaseShare = d.LeaseShare
	}
	if o.LeaseShare > 1 {
		return fmt.Errorf("admit: lease share %g is above 1", o.LeaseShare)
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// Limiter admits requests. It is safe for concurrent use; build it with New (the zero value is
// not usable) and release it with Close. Admit keeps working after Close, on the local tier.
type Limiter struct {
	o       Options
	now     func() time.Time
	log     *slog.Logger
	m       *metrics
	states  stateMap
	redis   *redisTier // nil without Redis
	stop    chan struct{}
	wg      sync.WaitGroup
	closing atomic.Bool
	closeMu sync.Once
	month   atomic.Pointer[monthInfo]
}

// New returns a Limiter. It does not contact Redis: the first Admit does.
func New(o Options) (*Limiter, error) {
	if err := o.validate(); err != nil {
		return nil, err
	}
	l := &Limiter{
		o:    o,
		now:  o.Now,
		log:  o.Logger,
		stop: make(chan struct{}),
	}
	if l.now == nil {
		l.now = time.Now
	}
	m, err := newMetrics(o.Registerer)
	if err != nil {
		return nil, fmt.Errorf("admit: register metrics: %w", err)
	}
	l.m = m
	l.states.init()
	if o.RedisURL != "" {
		rt, err := newRedisTier(l, o)
		if err != nil {
			return nil, err
		}
		l.redis = rt
		if o.Registerer != nil {
			up := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "maas_gateway_quota_redis_up",
				Help: "The quota tier deciding admissions: 1 the global tier (Redis), 0 the local tier (Redis outage).",
			}, func() float64 {
				if l.RedisUp() {
					return 1
				}
				return 0
			})
			for _, c := range append(m.redisCollectors(), up) {
				if err := o.Registerer.Register(c); err != nil {
					l.Close()
					return nil, fmt.Errorf("admit: register metrics: %w", err)
				}
			}
		}
	}
	l.wg.Add(1)
	go l.janitor()
	return l, nil
}

// RedisUp reports whether the global tier decides admissions: Redis is configured and not in
// an outage (see Options.FailuresToFallback and ProbesToRecover).
func (l *Limiter) RedisUp() bool { return l.redis != nil && l.redis.health.up.Load() }

// Close stops the background loops, sends the pending Redis settlements and corrections and
// closes the Redis client. Concurrency slots of tickets still open are left to expire.
// Idempotent.
func (l *Limiter) Close() error {
	var err error
	l.closeMu.Do(func() {
		if l.redis != nil && l.redis.health.up.Load() {
			l.redis.endIdle(0) // unused tokens and budget back, slots released
		}
		l.closing.Store(true)
		close(l.stop)
		l.wg.Wait()
		if l.redis != nil {
			err = l.redis.close()
		}
	})
	return err
}

// Ticket is an admitted request. Settle it exactly once when the request ends (further calls
// do nothing). Safe for concurrent use.
type Ticket struct {
	l        *Limiter
	settled  atomic.Bool
	redis    bool  // admitted by the global tier
	reserved int64 // Request.Tokens
	month    int32 // month index the budget was charged in
	n        int
	inline   [2]charge
	extra    []charge
	id       string   // admission id in Redis (record, lease member)
	keys     []string // its Redis keys (global tier)
	hasLease bool
	grant    *grant // a lease's grant (redisTier.grow), not a request
	leased   bool   // admitted from this gateway's leases (charge.ls)
	// settleActual is the actual tokens a lease's grant is settled with (leaseSet end).
	settleActual int64
}

// charge is what one admission did to one subject.
type charge struct {
	st     *subjectState
	limits Limits
	tpm    int64     // tokens charged to the TPM bucket; -1 = none
	budget bool      // reserved charged to the month's budget
	ls     *leaseSet // the lease it was admitted from (Ticket.leased)
}

func (t *Ticket) charges() []charge {
	if t.extra != nil {
		return t.extra
	}
	return t.inline[:t.n]
}

var noopTicket = &Ticket{}

// Admit returns a Ticket, or an *apierr.Error of Kind RateLimited (code rate_limit_exceeded)
// or QuotaExceeded (code insufficient_quota, for the monthly budget) with RetryAfter set and
// a message naming which limit. A caller whose ctx ends gets a ClientClosed error.
func (l *Limiter) Admit(ctx context.Context, r Request) (*Ticket, error) {
	n := 0
	for i := range r.Subjects {
		if !r.Subjects[i].Limits.unlimited() {
			n++
		}
	}
	if n == 0 {
		return noopTicket, nil
	}
	if r.Tokens < 0 {
		r.Tokens = 0
	}
	t := &Ticket{l: l, reserved: r.Tokens}
	var cs []charge
	if n <= len(t.inline) {
		cs = t.inline[:0]
	} else {
		t.extra = make([]charge, 0, n)
		cs = t.extra
	}
	for i := range r.Subjects {
		s := &r.Subjects[i]
		if s.Limits.unlimited() {
			continue
		}
		k, err := makeKey(s.Scope, s.ID)
		if err != nil {
			return nil, err
		}
		dup := false
		for j := range cs {
			if cs[j].st.key == k {
				dup = true
				break
			}
		}
		if dup {
			continue
		}
		cs = append(cs, charge{st: l.states.get(k), limits: s.Limits, tpm: -1})
	}
	sortCharges(cs)
	t.n = len(cs)
	if t.extra != nil {
		t.extra = cs
	}
	now := l.now()
	if l.redis != nil && l.redis.health.up.Load() && !l.closing.Load() {
		lr := l.redis.admitLeased(ctx, t, now)
		if lr == leaseAdmitted {
			return t, nil
		}
		decided, err := false, error(nil)
		if lr == leaseNone {
			decided, err = l.redis.admit(ctx, t, now)
		}
		if decided {
			if err != nil {
				return nil, err
			}
			return t, nil
		}
		if ctx.Err() != nil {
			return nil, &apierr.Error{Kind: apierr.ClientClosed, Message: "request cancelled", Err: ctx.Err()}
		}
		l.m.fallback.Inc()
	} else if l.redis != nil {
		l.m.fallback.Inc()
	}
	if err := l.admitLocal(ctx, t, now); err != nil {
		return nil, err
	}
	return t, nil
}

// Settle ends the request: releases the concurrency slot and corrects TPM and budget from the
// reservation to the actual tokens. Idempotent; safe from any goroutine.
func (t *Ticket) Settle(actualTokens int64) {
	if t == nil || t.l == nil || !t.settled.CompareAndSwap(false, true) {
		return
	}
	if actualTokens < 0 {
		actualTokens = 0
	}
	l := t.l
	if t.leased {
		l.redis.settleLeased(t, actualTokens)
		return
	}
	now := l.now()
	l.settleLocal(t, now, actualTokens)
	if t.redis {
		l.redis.settle(t, actualTokens)
	}
}

// reject builds the public error for a limit that refused a request.
func reject(scope uint8, reason reason, lim Limits, requested, used int64, retry time.Duration) *apierr.Error {
	who := "this API key"
	if scope == scopeUser {
		who = "this user"
	}
	if retry < time.Second {
		retry = time.Second
	}
	switch reason {
	case reasonRPM:
		return &apierr.Error{Kind: apierr.RateLimited, Code: "rate_limit_exceeded", RetryAfter: retry,
			Message: fmt.Sprintf("rate limit reached for requests per minute on %s: limit %d", who, lim.RequestsPerMinute)}
	case reasonTPM:
		return &apierr.Error{Kind: apierr.RateLimited, Code: "rate_limit_exceeded", RetryAfter: retry,
			Message: fmt.Sprintf("rate limit reached for tokens per minute on %s: limit %d, requested %d", who, lim.TokensPerMinute, requested)}
	case reasonConcurrency:
		return &apierr.Error{Kind: apierr.RateLimited, Code: "rate_limit_exceeded", RetryAfter: retry,
			Message: fmt.Sprintf("rate limit reached for concurrent requests on %s: limit %d", who, lim.MaxConcurrent)}
	default:
		return &apierr.Error{Kind: apierr.QuotaExceeded, Code: "insufficient_quota", RetryAfter: retry,
			Message: fmt.Sprintf("monthly token budget exhausted on %s: limit %d, used %d, requested %d", who, lim.MonthlyTokenBudget, used, requested)}
	}
}

var errScope = errors.New("unknown subject scope")

func makeKey(scope string, id int64) (subjectKey, error) {
	switch scope {
	case ScopeKey:
		return subjectKey{scope: scopeKey, id: id}, nil
	case ScopeUser:
		return subjectKey{scope: scopeUser, id: id}, nil
	}
	return subjectKey{}, apierr.Wrap(errScope, "admit: scope %q", scope)
}

type monthInfo struct {
	idx         int32
	start, next time.Time
}

// monthOf is month(now), cached until the month changes.
func (l *Limiter) monthOf(now time.Time) *monthInfo {
	if m := l.month.Load(); m != nil && !now.Before(m.start) && now.Before(m.next) {
		return m
	}
	m := &monthInfo{}
	m.idx, m.start, m.next = month(now)
	l.month.Store(m)
	return m
}

// month returns the index (year*12 + month-1) of t's calendar month in UTC, its first instant
// and the first instant of the next month.
func month(t time.Time) (int32, time.Time, time.Time) {
	t = t.UTC()
	y, m, _ := t.Date()
	start := time.Date(y, m, 1, 0, 0, 0, 0, time.UTC)
	return int32(y*12 + int(m) - 1), start, start.AddDate(0, 1, 0)
}
