package admit

import (
	"context"
	"strconv"
	"time"
)

// Leases: with Redis, a gateway takes a share of a subject's limits in one admission-script
// call (a grant: q requests, t tokens per minute, b budget tokens, k concurrency slots, each
// Options.LeaseShare of the limit) and admits that subject's requests from it in memory until
// it runs short; then it takes another grant of what is short. A grant is an admission like a
// request's (id, record, undo of a late reply, settlement exactly once), charged to Redis
// when taken, so:
//
//   - requests and tokens per minute: a gateway holds at most one unspent grant; in any window
//     a subject is admitted at most the bucket's bound plus what the gateways held unspent when
//     the window began: L × (1 + W/60) + G × LeaseShare × L with G gateways (tokens: plus one
//     reservation per gateway). Unspent requests are not given back (the bucket refills them
//     within LeaseShare × 60 s); unspent tokens are, when the lease ends.
//   - concurrency: exact (a request runs on a slot its gateway holds in Redis), but a gateway
//     keeps the slots of its peak concurrency since the lease began (plus up to one block)
//     until the lease ends: other gateways cannot use them meanwhile.
//   - budget: reservations never exceed it (the grant is charged first); unspent budget goes
//     back when the lease ends, until then other gateways may be refused up to G × one grant
//     early.
//
// A lease ends when its subject has been idle for LeaseTTL, when its limits or the month
// change, after a minute (at most half ReservationTTL, so that its records outlive it; its
// requests still running keep it until they end), during a Redis outage and at Close; its grants
// are then settled with what was used: unused tokens and budget refunded, slots released.
// A subject whose limits are too small to lease (a grant under 2 requests, slots, or twice
// the request's tokens) is decided per request, exactly, as before; so is every request while
// a grant is refused (for a second after the refusal): the exact script gives the reason.

// leaseSlotsMax bounds a grant's concurrency block (slot names are ZADDed one by one).
const leaseSlotsMax = 32

// grant is what a lease ticket asks of Redis besides its budget (Ticket.reserved).
type grant struct {
	reqs, toks, slots int64
}

// leaseSet is one gateway's lease of one subject's limits: the balances left of its grants.
// Guarded by the subject's mu.
type leaseSet struct {
	limits   Limits
	month    int32
	until    time.Time // admits no more from then on: a new lease is taken
	reqs     int64     // requests left
	toks     int64     // tokens left (< 0: debt of requests that used more than they reserved)
	bud      int64     // budget left (< 0: debt)
	slots    int64     // concurrency slots held
	inflight int64     // requests admitted from it, not settled
	grants   []*Ticket
	draining bool // no new admissions: ended when inflight reaches 0
	ended    bool
}

type leaseResult int

const (
	leaseNone     leaseResult = iota // not leased: the exact script decides
	leaseAdmitted                    // admitted from a lease (admitLeased), or grown (grow)
	leaseFailed                      // Redis failed: the local tier decides
)

func (t *Ticket) slots() int64 {
	if t.grant != nil {
		return t.grant.slots
	}
	return 1
}

// members names t's concurrency slots in Redis (as admitScript's members).
func (t *Ticket) members() []string {
	k := t.slots()
	if k == 1 {
		return []string{t.id}
	}
	m := make([]string, k)
	for j := range m {
		m[j] = t.id + ":" + strconv.Itoa(j+1)
	}
	return m
}

// sizes returns one grant of lim: requests, tokens, budget, slots. ok is false when a limit is
// too small to lease for a request reserving n tokens.
func (r *redisTier) sizes(lim Limits, n int64) (q, kt, kb, k int64, ok bool) {
	f := r.share
	if lim.RequestsPerMinute > 0 {
		if q = int64(float64(lim.RequestsPerMinute) * f); q < 2 {
			return 0, 0, 0, 0, false
		}
	}
	if lim.TokensPerMinute > 0 {
		if kt = int64(float64(lim.TokensPerMinute) * f); kt < 2 || kt < 2*min(n, int64(lim.TokensPerMinute)) {
			return 0, 0, 0, 0, false
		}
	}
	if lim.MonthlyTokenBudget > 0 {
		if kb = int64(float64(lim.MonthlyTokenBudget) * f); kb < 2 || kb < 2*n {
			return 0, 0, 0, 0, false
		}
	}
	if lim.MaxConcurrent > 0 {
		if k = min(int64(float64(lim.MaxConcurrent)*f), leaseSlotsMax); k < 2 {
			return 0, 0, 0, 0, false
		}
	}
	return q, kt, kb, k, true
}

// fits reports whether ls can admit now a request of lim reserving n tokens in month m.
func (ls *leaseSet) fits(lim Limits, m int32, n int64, now time.Time) bool {
	return ls != nil && !ls.draining && ls.limits == lim && ls.month == m && now.Before(ls.until) &&
		(lim.RequestsPerMinute <= 0 || ls.reqs >= 1) &&
		(lim.TokensPerMinute <= 0 || ls.toks >= min(n, int64(lim.TokensPerMinute))) &&
		(lim.MonthlyTokenBudget <= 0 || ls.bud >= n) &&
		(lim.MaxConcurrent <= 0 || ls.inflight < ls.slots)
}

// admitLeased admits t from this gateway's leases of its subjects, taking grants where they
// run short.
func (r *redisTier) admitLeased(ctx context.Context, t *Ticket, now time.Time) leaseResult {
	if r.share <= 0 {
		return leaseNone
	}
	cs := t.charges()
	n := t.reserved
	ns := now.UnixNano()
	for i := range cs {
		if _, _, _, _, ok := r.sizes(cs[i].limits, n); !ok || cs[i].st.noLease.Load() > ns {
			return leaseNone
		}
	}
	mi := r.l.monthOf(now)
	for range 4 {
		r.l.lockAll(cs)
		lack := -1
		for i := range cs {
			if !cs[i].st.lease.fits(cs[i].limits, mi.idx, n, now) {
				lack = i
				break
			}
		}
		if lack < 0 {
			for i := range cs {
				c := &cs[i]
				ls := c.st.lease
				lim := c.limits
				ls.inflight++
				if lim.RequestsPerMinute > 0 {
					ls.reqs--
				}
				if lim.TokensPerMinute > 0 {
					c.tpm = min(n, int64(lim.TokensPerMinute))
					ls.toks -= c.tpm
				}
				if lim.MonthlyTokenBudget > 0 {
					c.budget = true
					ls.bud -= n
				}
				c.ls = ls
				c.st.lastUsed.Store(ns)
			}
			unlockAll(cs)
			t.leased = true
			t.month = mi.idx
			return leaseAdmitted
		}
		st, lim := cs[lack].st, cs[lack].limits
		unlockAll(cs)
		res, cur := r.grow(ctx, st, lim, mi, n, now)
		if res != leaseAdmitted {
			return res
		}
		cs[lack].st = cur // the grant is on the state admit used (st, unless evicted)
	}
	return leaseNone
}

// grow takes a grant of what st's lease lacks for a request of lim reserving n tokens (a new
// lease if it has none, or its limits or month changed, or it is old). leaseAdmitted: the
// lease may fit now. It returns the subject's state as it is now: st, or the state the
// admission looked up again when st had been evicted (the grant is on that one).
func (r *redisTier) grow(ctx context.Context, st *subjectState, lim Limits, mi *monthInfo, n int64, now time.Time) (leaseResult, *subjectState) {
	st.leaseMu.Lock()
	defer st.leaseMu.Unlock()
	st.mu.Lock()
	ls := st.lease
	var ended []*Ticket
	if ls != nil && (ls.limits != lim || ls.month != mi.idx || !now.Before(ls.until)) {
		ls.draining = true
		st.lease = nil
		if ls.inflight == 0 {
			ended = r.endLocked(ls)
		}
		ls = nil
	}
	if ls.fits(lim, mi.idx, n, now) { // another request grew it meanwhile
		st.mu.Unlock()
		return leaseAdmitted, st
	}
	q, kt, kb, k, _ := r.sizes(lim, n)
	if ls != nil { // ask only for what is short (and a debt)
		charge := min(n, int64(lim.TokensPerMinute))
		if lim.RequestsPerMinute <= 0 || ls.reqs >= 1 {
			q = 0
		}
		if lim.TokensPerMinute <= 0 || ls.toks >= charge {
			kt = 0
		} else {
			kt = max(kt, charge-ls.toks)
		}
		if lim.MonthlyTokenBudget <= 0 || ls.bud >= n {
			kb = 0
		} else {
			kb = max(kb, n-ls.bud)
		}
		if lim.MaxConcurrent <= 0 || ls.inflight < ls.slots {
			k = 0
		}
	}
	st.mu.Unlock()
	r.settleGrants(ended)
	g := &Ticket{l: r.l, reserved: kb, n: 1, grant: &grant{reqs: q, toks: kt, slots: k}}
	g.inline[0] = charge{st: st, limits: lim, tpm: -1}
	decided, err := r.admit(ctx, g, now)
	if !decided {
		return leaseFailed, st
	}
	if err != nil {
		st.noLease.Store(now.Add(time.Second).UnixNano())
		return leaseNone, st
	}
	st = g.inline[0].st // admit looks a evicted state up again
	st.mu.Lock()
	ls = st.lease
	if ls == nil {
		ls = &leaseSet{limits: lim, month: mi.idx, until: now.Add(r.leaseHold)}
		st.lease = ls
		r.leasesMu.Lock()
		r.leases[ls] = st
		r.leasesMu.Unlock()
	}
	ls.reqs += q
	ls.toks += kt
	ls.bud += kb
	ls.slots += k
	ls.grants = append(ls.grants, g)
	st.mu.Unlock()
	return leaseAdmitted, st
}

// settleLeased settles a request admitted from leases: its lease gets back the tokens and
// budget it reserved beyond what it used (or owes what it used beyond) and its slot.
func (r *redisTier) settleLeased(t *Ticket, actual int64) {
	var ended []*Ticket
	for _, c := range t.charges() {
		st, ls := c.st, c.ls
		st.mu.Lock()
		if !ls.ended {
			ls.inflight--
			if c.tpm >= 0 {
				ls.toks += c.tpm - actual
			}
			if c.budget {
				ls.bud += t.reserved - actual
			}
			if ls.draining && ls.inflight == 0 {
				ended = append(ended, r.endLocked(ls)...)
			}
		}
		st.mu.Unlock()
	}
	r.settleGrants(ended)
}

// endLocked ends ls (its subject's mu held) and returns its grants, each with the actual
// tokens to settle it with (Ticket.reserved set to it is not touched: grant.toks carries the
// settlement's actual) so that the unused tokens and budget go back to Redis.
func (r *redisTier) endLocked(ls *leaseSet) []*Ticket {
	ls.ended = true
	r.leasesMu.Lock()
	delete(r.leases, ls)
	r.leasesMu.Unlock()
	bud, toks := ls.bud, ls.toks
	for i := len(ls.grants) - 1; i >= 0; i-- {
		g := ls.grants[i]
		c := &g.inline[0]
		rb, rt := share(&bud, g.reserved), share(&toks, g.grant.toks)
		var actual int64
		if c.budget {
			actual = g.reserved - rb
		} else {
			actual = max(0, -rt)
		}
		if c.tpm >= 0 {
			c.tpm = max(0, rt+actual)
		}
		g.settleActual = actual
	}
	return ls.grants
}

// share takes from *left what goes back with a grant of k: all of a debt, else up to k.
func share(left *int64, k int64) int64 {
	v := *left
	if v > k {
		v = k
	}
	*left -= v
	return v
}

func (r *redisTier) settleGrants(gs []*Ticket) {
	for _, g := range gs {
		g.Settle(g.settleActual)
	}
}

// endLeases ends the leases idle for LeaseTTL, or all of them during an outage: their slots
// are not renewed, so Redis may give them to others after LeaseTTL (their settlements wait
// for Redis to return).
func (r *redisTier) endLeases() {
	if !r.health.up.Load() {
		r.endIdle(0)
		return
	}
	r.endIdle(r.l.now().Add(-r.lease).UnixNano())
}

// endIdle ends the leases unused since before cutoff (unix ns); all of them when cutoff is 0.
func (r *redisTier) endIdle(cutoff int64) {
	type held struct {
		ls *leaseSet
		st *subjectState
	}
	var hs []held
	r.leasesMu.Lock()
	for ls, st := range r.leases {
		hs = append(hs, held{ls, st})
	}
	r.leasesMu.Unlock()
	var ended []*Ticket
	for _, h := range hs {
		h.st.mu.Lock()
		if !h.ls.ended && (cutoff == 0 || (h.ls.inflight == 0 && h.st.lastUsed.Load() < cutoff)) {
			if h.st.lease == h.ls {
				h.st.lease = nil
			}
			ended = append(ended, r.endLocked(h.ls)...)
		}
		h.st.mu.Unlock()
	}
	r.settleGrants(ended)
}
