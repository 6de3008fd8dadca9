package upstream

import (
	"context"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/maas-platform/maas/gateway/internal/snapshot"
)

// healthSnapshot builds a snapshot with the registry models m (enabled), idle (enabled, no
// backend) and off (disabled), plus the given backends.
func healthSnapshot(backends ...snapshot.Backend) *snapshot.Snapshot {
	b := snapshot.NewBuilder(now)
	b.AddModel(&snapshot.Model{Name: "m", Enabled: true})
	b.AddModel(&snapshot.Model{Name: "idle", Enabled: true})
	b.AddModel(&snapshot.Model{Name: "off", Enabled: false})
	for _, be := range backends {
		b.AddBackend(be)
	}
	return b.Build()
}

// exportedHealth gathers maas_gateway_model_healthy_backends from reg.
func exportedHealth(t *testing.T, reg *prometheus.Registry) map[string]int {
	t.Helper()
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int{}
	for _, f := range fams {
		if f.GetName() != "maas_gateway_model_healthy_backends" {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "model" {
					out[l.GetValue()] = int(m.GetGauge().GetValue())
				}
			}
		}
	}
	return out
}

func TestModelHealthyBackends(t *testing.T) {
	a := backend("a", 10, 100)
	a.Models = []string{"m", "extra"} // extra: implicit model, served but not registered
	draining := backend("draining", 10, 100)
	draining.Load.State = "draining"
	disabled := backend("disabled", 10, 100)
	disabled.Load.Disabled = true
	zero := backend("zero", 10, 0)
	stale := backend("stale", 10, 100)
	stale.Load.State = "unhealthy" // control's reaper: 3 heartbeats missed
	offServer := backend("offserver", 10, 100)
	offServer.Models = []string{"off"}

	reg := prometheus.NewRegistry()
	o := testOptions()
	o.Registerer = reg
	o.Now = func() time.Time { return now }
	o.BreakerFailures = 1
	o.BreakerOpenFor = time.Hour
	p, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	check := func(step string, want map[string]int) {
		t.Helper()
		if diff := cmp.Diff(want, p.HealthyBackends()); diff != "" {
			t.Errorf("%s: HealthyBackends (-want +got):\n%s", step, diff)
		}
		if diff := cmp.Diff(want, exportedHealth(t, reg)); diff != "" {
			t.Errorf("%s: exported series (-want +got):\n%s", step, diff)
		}
	}
	check("empty pool", map[string]int{})

	// Sync: only a counts for m; a disabled registry model gets no series.
	p.Sync(healthSnapshot(a, draining, disabled, zero, stale, offServer))
	check("after sync", map[string]int{"m": 1, "idle": 0, "extra": 1})

	// Load update: the draining backend turns healthy, the stale one heartbeats again.
	l1, l2 := draining.Load, stale.Load
	l1.State, l2.State = "healthy", "healthy"
	p.UpdateLoad([]snapshot.Load{l1, l2})
	check("after load update", map[string]int{"m": 3, "idle": 0, "extra": 1})

	// Breaker change: a's breaker opens after one failure.
	m := &snapshot.Model{Name: "extra", Policy: snapshot.PolicyLeastOutstanding}
	lease, err := p.Acquire(context.Background(), Request{Model: m})
	if err != nil || lease.U.ID != "a" {
		t.Fatalf("acquire a: %v", err)
	}
	lease.Release(Failure)
	check("after a's breaker opened", map[string]int{"m": 2, "idle": 0, "extra": 0})

	// Gone models lose their series: idle leaves the registry, nothing serves extra.
	b := snapshot.NewBuilder(now)
	b.AddModel(&snapshot.Model{Name: "m", Enabled: true})
	b.AddBackend(draining)
	p.Sync(b.Build())
	check("after models went away", map[string]int{"m": 1})

	p.Sync(snapshot.NewBuilder(now).Build())
	check("after everything went away", map[string]int{})
}

func TestModelHealthyBackendsNotPerRequest(t *testing.T) {
	// The gauge is recomputed by Sync, UpdateLoad and breaker changes only: requests that
	// succeed leave it alone (a Registerer-less pool still keeps the values).
	p, m := newTestPool(t, snapshot.PolicyLeastOutstanding, testOptions(), backend("a", 10, 100))
	if got := p.HealthyBackends()["m"]; got != 1 {
		t.Fatalf("m has %d healthy backends, want 1", got)
	}
	// Plant a value no refresh would compute: it survives only if nothing refreshes.
	p.health.mu.Lock()
	p.health.models["m"] = 42
	p.health.mu.Unlock()
	for range 10 {
		l, err := p.Acquire(context.Background(), Request{Model: m})
		if err != nil {
			t.Fatal(err)
		}
		l.Release(Success)
	}
	if got := p.HealthyBackends()["m"]; got != 42 {
		t.Errorf("the gauge was recomputed on the request path (m = %d)", got)
	}
}
