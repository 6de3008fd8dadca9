package sidecar

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/maas-platform/maas/pkg/registry"
	"github.com/maas-platform/maas/worker/internal/engine"
)

// fakeControl is a hand fake of control's three internal endpoints.
type fakeControl struct {
	mu          sync.Mutex
	known       bool
	registers   int
	capacities  []int // of each registration
	heartbeats  []registry.HeartbeatRequest
	deregisters int
}

func (f *fakeControl) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if r.Header.Get("Authorization") != "Bearer tok-0123456789abcdef" {
		w.WriteHeader(401)
		return
	}
	switch {
	case r.URL.Path == "/internal/v1/backends/register":
		f.known = true
		f.registers++
		var reg registry.RegisterRequest
		_ = json.NewDecoder(r.Body).Decode(&reg)
		f.capacities = append(f.capacities, reg.Capacity)
		w.Write([]byte(`{"id":"b1"}`))
	case strings.HasSuffix(r.URL.Path, "/heartbeat"):
		if !f.known {
			w.WriteHeader(404)
			w.Write([]byte(`{"error":{"message":"no such backend","type":"not_found_error","param":null,"code":"backend_not_found"}}`))
			return
		}
		var hb registry.HeartbeatRequest
		_ = json.NewDecoder(r.Body).Decode(&hb)
		f.heartbeats = append(f.heartbeats, hb)
		w.Write([]byte(`{"id":"b1"}`))
	case strings.HasSuffix(r.URL.Path, "/deregister"):
		f.known = false
		f.deregisters++
		w.WriteHeader(204)
	default:
		w.WriteHeader(404)
	}
}

// fakeEngine is a hand fake of Engine.
type fakeEngine struct {
	mu       sync.Mutex
	down     bool
	load     registry.Load
	models   []string
	limit    engine.Limit
	limitErr error
	asked    int // Limit calls
}

func (e *fakeEngine) Ready(context.Context) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.down {
		return context.DeadlineExceeded
	}
	return nil
}
func (e *fakeEngine) Models(context.Context) ([]string, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.models, nil
}
func (e *fakeEngine) Load(context.Context) (registry.Load, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.load, nil
}
func (e *fakeEngine) Limit(context.Context) (engine.Limit, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.asked++
	return e.limit, e.limitErr
}

func newTestWorker(t *testing.T, fc *fakeControl, eng *fakeEngine) *worker {
	srv := httptest.NewServer(fc)
	t.Cleanup(srv.Close)
	o := DefaultOptions()
	o.BackendID, o.AdvertiseURL, o.Capacity = "b1", "http://127.0.0.1:9", 8
	o.HeartbeatInterval, o.DrainGrace = 100*time.Millisecond, 2*time.Second
	o.fill(o.AdvertiseURL)
	return &worker{o: o, log: o.Logger, m: newMetrics(prometheus.NewRegistry()), eng: eng, now: time.Now,
		cc: newControlClient(srv.URL, "tok-0123456789abcdef"), models: eng.models, capacity: o.Capacity}
}

func TestBeatRegistersAndReRegisters(t *testing.T) {
	fc := &fakeControl{}
	eng := &fakeEngine{models: []string{"m"}, load: registry.Load{Running: 2, Waiting: 1, KVCacheUsage: 0.5, InFlight: 3}}
	w := newTestWorker(t, fc, eng)
	ctx := context.Background()

	w.beat(ctx, registry.StateHealthy)
	if fc.registers != 1 || len(fc.heartbeats) != 1 || fc.heartbeats[0].State != "healthy" || fc.heartbeats[0].Running != 2 || fc.heartbeats[0].KVCacheUsage != 0.5 {
		t.Fatalf("first beat: registers %d heartbeats %+v", fc.registers, fc.heartbeats)
	}
	// Control forgets the backend (e.g. restarted with an expired row): 404 → register again.
	fc.known = false
	w.beat(ctx, registry.StateHealthy)
	if fc.registers != 2 || len(fc.heartbeats) != 2 {
		t.Fatalf("after 404: registers %d heartbeats %d", fc.registers, len(fc.heartbeats))
	}
	// The engine goes down: unhealthy, load zero.
	eng.down = true
	w.beat(ctx, registry.StateHealthy)
	if hb := fc.heartbeats[2]; hb.State != "unhealthy" || hb.Running != 0 {
		t.Errorf("engine down: %+v", hb)
	}
	// A new LoRA appears: the model list is sent.
	eng.down = false
	eng.models = []string{"m", "lora"}
	w.beat(ctx, registry.StateHealthy)
	if hb := fc.heartbeats[3]; strings.Join(hb.Models, ",") != "m,lora" {
		t.Errorf("models not sent: %+v", hb)
	}
	w.beat(ctx, registry.StateHealthy)
	if hb := fc.heartbeats[4]; hb.Models != nil {
		t.Errorf("unchanged models sent again: %+v", hb)
	}
}

func TestDrainWaitsForInFlight(t *testing.T) {
	fc := &fakeControl{}
	eng := &fakeEngine{models: []string{"m"}, load: registry.Load{Running: 1, InFlight: 1}}
	w := newTestWorker(t, fc, eng)
	w.beat(context.Background(), registry.StateHealthy)
	done := make(chan error, 1)
	go func() { done <- w.drain() }()
	deadline := time.Now().Add(5 * time.Second)
	for {
		fc.mu.Lock()
		n := len(fc.heartbeats)
		last := fc.heartbeats[n-1].State
		fc.mu.Unlock()
		if last == "draining" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no draining heartbeat")
		}
		time.Sleep(10 * time.Millisecond)
	}
	select {
	case <-done:
		t.Fatal("drain ended with a request in flight")
	case <-time.After(200 * time.Millisecond):
	}
	eng.mu.Lock()
	eng.load = registry.Load{}
	eng.mu.Unlock()
	select {
	case err := <-done:
		if err != nil || fc.deregisters != 1 {
			t.Errorf("drain: %v, deregisters %d", err, fc.deregisters)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("drain did not end when in-flight reached zero")
	}
}
