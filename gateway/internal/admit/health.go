package admit

import "sync/atomic"

// health decides which tier admits, with hysteresis: Redis is left only after
// FailuresToFallback round trips in a row failed, and taken back only after ProbesToRecover
// probes in a row succeeded, so one slow reply does not move a whole gateway to local limits
// and a flapping Redis does not move it back and forth.
//
// up is read on every admission; failure and success are called once per round trip (not per
// request), probe by the prober goroutine alone. Safe for concurrent use.
type health struct {
	up     atomic.Bool
	fails  atomic.Int32 // round trips failed in a row while up
	probes int          // probes succeeded in a row while down (prober only)
	failN  int32
	probeN int
}

func newHealth(failN, probeN int) *health {
	h := &health{failN: int32(failN), probeN: probeN}
	h.up.Store(true)
	return h
}

// failure records a failed round trip and reports whether it switched to the local tier.
func (h *health) failure() bool {
	if !h.up.Load() {
		return false
	}
	return h.fails.Add(1) >= h.failN && h.up.CompareAndSwap(true, false)
}

// success records a round trip that succeeded.
func (h *health) success() {
	if h.fails.Load() != 0 {
		h.fails.Store(0)
	}
}

// probe records a probe's outcome while down and reports whether it switched back to Redis.
func (h *health) probe(ok bool) bool {
	if h.up.Load() {
		return false
	}
	if !ok {
		h.probes = 0
		return false
	}
	h.probes++
	if h.probes < h.probeN {
		return false
	}
	h.probes = 0
	h.fails.Store(0)
	return h.up.CompareAndSwap(false, true)
}
