package admit

import (
	"context"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

const (
	scopeKey uint8 = iota
	scopeUser
)

var scopeNames = [...]string{scopeKey: ScopeKey, scopeUser: ScopeUser}

type subjectKey struct {
	scope uint8
	id    int64
}

func (a subjectKey) less(b subjectKey) bool {
	if a.scope != b.scope {
		return a.scope < b.scope
	}
	return a.id < b.id
}

// subjectState is the local tier's state of one subject. mu guards every field but lastUsed
// and seedRetry.
type subjectState struct {
	mu         sync.Mutex
	key        subjectKey
	dead       bool // evicted: a holder of a stale pointer must look the key up again
	limits     Limits
	rpm        *rate.Limiter // nil until a requests-per-minute limit is first set
	tpm        *rate.Limiter // nil until a tokens-per-minute limit is first set
	inflight   int
	month      int32 // month index budgetUsed counts; 0 = not seeded
	budgetUsed int64

	lastUsed  atomic.Int64 // unix nanoseconds of the last Admit
	seedRetry atomic.Int64 // unix nanoseconds before which a failed budget seed is not retried

	seeded      atomic.Int32 // month, set with it: lets Admit skip seedLocal without locking
	seedMu      sync.Mutex   // serialises seeding the Redis budget counter
	redisSeeded atomic.Int32 // month index this gateway seeded in Redis

	redisKeys atomic.Pointer[[2]string] // its hash and lease set in Redis, named at first use

	lease   *leaseSet    // this gateway's lease of the subject's limits in Redis (with mu)
	leaseMu sync.Mutex   // serialises taking leases of the subject
	noLease atomic.Int64 // unix nanoseconds before which no lease is asked (one was refused)
}

// perMinute converts a per-minute count into a rate.Limit (events per second).
func perMinute(n int) rate.Limit { return rate.Limit(float64(n) / 60) }

// apply brings the buckets in line with lim. Called with mu held.
func (s *subjectState) apply(now time.Time, lim Limits) {
	if s.limits == lim {
		return
	}
	s.rpm = resize(s.rpm, now, lim.RequestsPerMinute)
	s.tpm = resize(s.tpm, now, lim.TokensPerMinute)
	s.limits = lim
}

func resize(b *rate.Limiter, now time.Time, perMin int) *rate.Limiter {
	if perMin <= 0 {
		return b
	}
	if b == nil {
		return rate.NewLimiter(perMinute(perMin), perMin) // starts full
	}
	if b.Burst() != perMin {
		b.SetLimitAt(now, perMinute(perMin))
		b.SetBurstAt(now, perMin)
	}
	return b
}

// wait is how long until bucket b holds need tokens.
func wait(b *rate.Limiter, now time.Time, need float64, perMin int) time.Duration {
	missing := need - b.TokensAt(now)
	if missing <= 0 {
		return 0
	}
	return time.Duration(math.Ceil(missing * float64(time.Minute) / float64(perMin)))
}

// take takes n tokens from b, going into debt if it must (the debt delays later requests).
// A refund (n < 0) may fill b above its burst until its next use caps it.
func take(b *rate.Limiter, now time.Time, n int64) {
	if n <= 0 {
		if n < 0 {
			b.AllowN(now, int(n))
		}
		return
	}
	if b.AllowN(now, int(n)) {
		return
	}
	burst := int64(b.Burst())
	for n > 0 { // rare: actual usage above the reservation and the bucket short
		c := min(n, burst)
		b.ReserveN(now, int(c))
		n -= c
	}
}

const shards = 64

// stateMap is a sharded map of subject states (a sync.Map would allocate on every lookup).
type stateMap struct {
	shard [shards]struct {
		mu sync.RWMutex
		m  map[subjectKey]*subjectState
	}
}

func (m *stateMap) init() {
	for i := range m.shard {
		m.shard[i].m = make(map[subjectKey]*subjectState)
	}
}

func (m *stateMap) get(k subjectKey) *subjectState {
	sh := &m.shard[(uint64(k.id)*0x9E3779B97F4A7C15+uint64(k.scope))>>58]
	sh.mu.RLock()
	s := sh.m[k]
	sh.mu.RUnlock()
	if s != nil {
		return s
	}
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if s = sh.m[k]; s == nil {
		s = &subjectState{key: k}
		sh.m[k] = s
	}
	return s
}

// evict drops states idle since before cutoff whose buckets are full and that have nothing in
// flight. It returns how many it dropped.
func (m *stateMap) evict(now time.Time, cutoff int64) int {
	dropped := 0
	for i := range m.shard {
		sh := &m.shard[i]
		sh.mu.Lock()
		for k, s := range sh.m {
			if s.lastUsed.Load() > cutoff || !s.mu.TryLock() {
				continue
			}
			if s.inflight == 0 && full(s.rpm, now) && full(s.tpm, now) {
				s.dead = true
				delete(sh.m, k)
				dropped++
			}
			s.mu.Unlock()
		}
		sh.mu.Unlock()
	}
	return dropped
}

func full(b *rate.Limiter, now time.Time) bool {
	return b == nil || b.TokensAt(now) >= float64(b.Burst())
}

func (m *stateMap) len() int {
	n := 0
	for i := range m.shard {
		m.shard[i].mu.RLock()
		n += len(m.shard[i].m)
		m.shard[i].mu.RUnlock()
	}
	return n
}

// sortCharges orders cs by subject so that locks are always taken in the same order.
func sortCharges(cs []charge) {
	for i := 1; i < len(cs); i++ {
		for j := i; j > 0 && cs[j].st.key.less(cs[j-1].st.key); j-- {
			cs[j], cs[j-1] = cs[j-1], cs[j]
		}
	}
}

// lockAll locks every subject of cs in order, replacing states evicted meanwhile.
func (l *Limiter) lockAll(cs []charge) {
	for {
		dead := false
		for i := range cs {
			cs[i].st.mu.Lock()
			dead = dead || cs[i].st.dead
		}
		if !dead {
			return
		}
		for i := range cs {
			st := cs[i].st
			st.mu.Unlock()
			if st.dead {
				cs[i].st = l.states.get(st.key)
			}
		}
	}
}

func unlockAll(cs []charge) {
	for i := range cs {
		cs[i].st.mu.Unlock()
	}
}

// admitLocal decides t on the local tier and charges it. With every subject locked it takes
// tokens as it checks (one bucket operation each on success) and puts them back if a later
// limit refuses, so a refused request charges nothing.
func (l *Limiter) admitLocal(ctx context.Context, t *Ticket, now time.Time) error {
	mi := l.monthOf(now)
	cur := mi.idx
	cs := t.charges()
	for i := range cs {
		if cs[i].limits.MonthlyTokenBudget > 0 && cs[i].st.seeded.Load() != cur {
			l.seedLocal(ctx, cs[i].st, cur, mi.start, now)
		}
	}
	l.lockAll(cs)
	n := t.reserved
	for i := range cs {
		c := &cs[i]
		s := c.st
		s.apply(now, c.limits)
		lim := c.limits
		why := reason(255)
		var retry time.Duration
		var used int64
		switch {
		case lim.MaxConcurrent > 0 && s.inflight >= lim.MaxConcurrent:
			why, retry = reasonConcurrency, time.Second
		case lim.MonthlyTokenBudget > 0 && s.month == cur &&
			(s.budgetUsed+n > lim.MonthlyTokenBudget || s.budgetUsed >= lim.MonthlyTokenBudget):
			why, retry, used = reasonBudget, mi.next.Sub(now), s.budgetUsed
		case lim.RequestsPerMinute > 0 && !s.rpm.AllowN(now, 1):
			why, retry = reasonRPM, wait(s.rpm, now, 1, lim.RequestsPerMinute)
		case lim.TokensPerMinute > 0:
			// A reservation above the limit needs a full bucket; the rest is charged at
			// Settle as debt.
			c.tpm = min(n, int64(lim.TokensPerMinute))
			if !s.tpm.AllowN(now, int(c.tpm)) {
				why, retry = reasonTPM, wait(s.tpm, now, float64(c.tpm), lim.TokensPerMinute)
				c.tpm = -1
				if lim.RequestsPerMinute > 0 {
					s.rpm.AllowN(now, -1)
				}
			}
		}
		if why != 255 {
			for j := range i { // put back what the subjects before took
				p := &cs[j]
				if p.limits.RequestsPerMinute > 0 {
					p.st.rpm.AllowN(now, -1)
				}
				if p.tpm > 0 {
					p.st.tpm.AllowN(now, -int(p.tpm))
				}
				p.tpm = -1
			}
			unlockAll(cs)
			l.m.rejected(s.key.scope, why)
			return reject(s.key.scope, why, lim, n, used, retry)
		}
	}
	ns := now.UnixNano()
	for i := range cs {
		c := &cs[i]
		s := c.st
		s.inflight++
		s.lastUsed.Store(ns)
		if c.limits.MonthlyTokenBudget > 0 && s.month == cur {
			s.budgetUsed += n
			c.budget = true
		}
	}
	unlockAll(cs)
	t.month = cur
	return nil
}

// seedLocal loads a subject's budget counter for month cur from BudgetUsed once. On failure
// the request is admitted without a budget check and the seed is retried after 5 s.
func (l *Limiter) seedLocal(ctx context.Context, s *subjectState, cur int32, start, now time.Time) {
	if now.UnixNano() < s.seedRetry.Load() {
		return
	}
	var used int64
	if l.o.BudgetUsed != nil {
		var err error
		used, err = l.o.BudgetUsed(ctx, scopeNames[s.key.scope], s.key.id, start)
		if err != nil {
			s.seedRetry.Store(now.Add(5 * time.Second).UnixNano())
			l.log.Warn("quota budget seed failed; admitting without budget check", "scope", scopeNames[s.key.scope], "subject_id", s.key.id, "err", err)
			return
		}
	}
	s.mu.Lock()
	if s.month != cur {
		s.month = cur
		s.budgetUsed = used
		s.seeded.Store(cur)
	}
	s.mu.Unlock()
}

// settleLocal releases t's local charges: the in-flight count always; TPM and budget only for
// tickets the local tier decided.
func (l *Limiter) settleLocal(t *Ticket, now time.Time, actual int64) {
	for _, c := range t.charges() {
		s := c.st
		s.mu.Lock()
		s.inflight--
		if !t.redis {
			if c.tpm >= 0 && s.tpm != nil {
				take(s.tpm, now, actual-c.tpm)
			}
			if c.budget && s.month == t.month {
				s.budgetUsed = max(0, s.budgetUsed+actual-t.reserved)
			}
		}
		s.mu.Unlock()
	}
}

// janitor evicts idle subject states once a minute.
func (l *Limiter) janitor() {
	defer l.wg.Done()
	tick := time.NewTicker(time.Minute)
	defer tick.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-tick.C:
			now := l.now()
			l.states.evict(now, now.Add(-l.o.IdleEviction).UnixNano())
		}
	}
}
