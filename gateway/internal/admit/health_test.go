package admit

import (
	"strings"
	"testing"
	"time"
)

// TestHealthHysteresis: the switching rule itself, step by step.
func TestHealthHysteresis(t *testing.T) {
	h := newHealth(3, 2)
	steps := []struct {
		do      string
		switch_ bool
		up      bool
	}{
		{"fail", false, true}, {"fail", false, true}, {"ok", false, true}, // a success resets the count
		{"fail", false, true}, {"fail", false, true}, {"fail", true, false},
		{"fail", false, false},                                   // already down
		{"probe-ok", false, false}, {"probe-fail", false, false}, // a failed probe resets
		{"probe-ok", false, false}, {"probe-ok", true, true},
		{"fail", false, true}, {"fail", false, true}, {"fail", true, false}, // counts start again
	}
	for i, s := range steps {
		var sw bool
		switch s.do {
		case "fail":
			sw = h.failure()
		case "ok":
			h.success()
		case "probe-ok":
			sw = h.probe(true)
		case "probe-fail":
			sw = h.probe(false)
		}
		if sw != s.switch_ || h.up.Load() != s.up {
			t.Fatalf("step %d (%s): switched %v up %v, want %v %v", i, s.do, sw, h.up.Load(), s.switch_, s.up)
		}
	}
}

// TestOptionsRedisTier: the Redis tier's settings take their defaults, and a record that
// would expire before a lease is refused.
func TestOptionsRedisTier(t *testing.T) {
	o := Options{}
	if err := o.validate(); err != nil {
		t.Fatal(err)
	}
	d := DefaultOptions()
	if o.FailuresToFallback != d.FailuresToFallback || o.ProbesToRecover != d.ProbesToRecover ||
		o.ReservationTTL != d.ReservationTTL || o.AdmitBatch != d.AdmitBatch || o.AdmitPipelines != d.AdmitPipelines {
		t.Errorf("defaults not applied: %+v", o)
	}
	o = Options{LeaseTTL: time.Hour, ReservationTTL: time.Minute}
	if err := o.validate(); err == nil || !strings.Contains(err.Error(), "reservation ttl") {
		t.Errorf("validate: %v, want the reservation ttl refused", err)
	}
}
