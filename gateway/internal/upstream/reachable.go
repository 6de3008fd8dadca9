package upstream

import (
	"time"

	"github.com/sony/gobreaker/v2"
)

// probeEvery is the period of the reachability probe of a backend whose breaker opened
// on refused connections.
const probeEvery = 50 * time.Millisecond

// probeUntilReachable handles a breaker, br, that opened on an Unreachable failure: the
// backend refused connections (its engine restarting, say). Waiting out BreakerOpenFor
// would refuse every request to it for that long after it is back; instead a goroutine
// dials its address every probeEvery (a TCP connect, closed at once: no request reaches
// the engine) and, as soon as a connection is accepted, puts a new closed breaker in br's
// place. The goroutine ends then, or as soon as br is no longer u's breaker or no longer
// open (its own half-open probe came due), or u is removed: it lives at most
// BreakerOpenFor, plus one connect timeout. One runs per backend at a time.
//
// It is called from br's OnStateChange, with br's lock held: it must not call into br.
func (u *Upstream) probeUntilReachable(br *gobreaker.TwoStepCircuitBreaker[struct{}]) {
	if !u.probing.CompareAndSwap(false, true) {
		return // the running probe carries on: it stops only once br is not open
	}
	go func() {
		defer u.probing.Store(false)
		t := time.NewTimer(probeEvery)
		defer t.Stop()
		for range t.C {
			if u.removed.Load() || u.breaker.Load() != br || br.State() != gobreaker.StateOpen {
				return
			}
			if c, err := u.Client.Dial(u.addr); err == nil {
				_ = c.Close()
				if u.breaker.CompareAndSwap(br, u.newBreaker()) {
					u.openUntil.Store(0)
					u.unreachable.Store(false)
					u.opts.Logger.Info("backend accepts connections again: circuit breaker closed", "backend", u.ID)
					if u.changed != nil {
						u.changed()
					}
				}
				return
			}
			t.Reset(probeEvery)
		}
	}()
}
