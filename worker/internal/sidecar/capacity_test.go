package sidecar

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/maas-platform/maas/pkg/config"
	"github.com/maas-platform/maas/pkg/registry"
	"github.com/maas-platform/maas/worker/internal/engine"
	"github.com/maas-platform/maas/worker/internal/engine/vllm"
)

func TestDecideCapacity(t *testing.T) {
	stated := engine.Limit{N: 64, Source: "GET /props total_slots"}
	tests := []struct {
		name       string
		stated     engine.Limit
		configured int
		want       int
		wantErr    bool
	}{
		{"engine only", stated, 0, 64, false},
		{"setting caps the engine", stated, 16, 16, false},
		{"engine caps the setting", stated, 256, 64, false},
		{"equal", stated, 64, 64, false},
		{"setting only", engine.Limit{}, 12, 12, false},
		{"neither", engine.Limit{}, 0, 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, note, err := decideCapacity(tt.stated, tt.configured)
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Fatalf("got %d (%q), %v; want %d, error %v", got, note, err, tt.want, tt.wantErr)
			}
		})
	}
}

// TestWaitReadyDecidesCapacity: the capacity registered is the engine's limit capped by
// the setting, the command line's when the engine states none, and the worker refuses to
// start (an error naming MAAS_ENGINE_CAPACITY) with neither. Today's worker registered 256.
func TestWaitReadyDecidesCapacity(t *testing.T) {
	tests := []struct {
		name       string
		limit      engine.Limit
		cmdLimit   engine.Limit
		configured int
		want       int
	}{
		{"engine's limit", engine.Limit{N: 48, Source: "GET /info max_concurrent_requests"}, engine.Limit{}, 0, 48},
		{"capped by the setting", engine.Limit{N: 48, Source: "x"}, engine.Limit{}, 10, 10},
		{"setting above the engine", engine.Limit{N: 48, Source: "x"}, engine.Limit{}, 500, 48},
		{"command line", engine.Limit{}, engine.Limit{N: 32, Source: "--max-num-seqs in MAAS_ENGINE_CMD"}, 0, 32},
		{"engine before command line", engine.Limit{N: 20, Source: "x"}, engine.Limit{N: 32, Source: "y"}, 0, 20},
		{"setting only", engine.Limit{}, engine.Limit{}, 7, 7},
		{"neither", engine.Limit{}, engine.Limit{}, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fc := &fakeControl{}
			eng := &fakeEngine{models: []string{"m"}, limit: tt.limit}
			w := newTestWorker(t, fc, eng)
			w.o.Capacity, w.capacity, w.adapter, w.cmdLimit = tt.configured, 0, vllm.Adapter, tt.cmdLimit
			err := w.waitReady(context.Background())
			if tt.want == 0 {
				var ce *config.Error
				if !errors.As(err, &ce) || ce.Name != "MAAS_ENGINE_CAPACITY" || !strings.Contains(err.Error(), "--max-num-seqs") {
					t.Fatalf("want a refusal naming MAAS_ENGINE_CAPACITY and --max-num-seqs, got %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			w.beat(context.Background(), registry.StateHealthy)
			if len(fc.capacities) != 1 || fc.capacities[0] != tt.want {
				t.Fatalf("registered capacities %v, want [%d]", fc.capacities, tt.want)
			}
		})
	}
}

// TestWaitReadyRetriesLimit: an engine that cannot be asked its limit yet is waited for,
// not refused.
func TestWaitReadyRetriesLimit(t *testing.T) {
	eng := &fakeEngine{models: []string{"m"}, limitErr: errors.New("503")}
	w := newTestWorker(t, &fakeControl{}, eng)
	w.o.Capacity = 0
	done := make(chan error, 1)
	go func() { done <- w.waitReady(context.Background()) }()
	// Two failed asks, and waitReady still waits.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		eng.mu.Lock()
		asked := eng.asked
		eng.mu.Unlock()
		if asked >= 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the limit was not asked again")
		}
	}
	select {
	case err := <-done:
		t.Fatalf("waitReady returned %v while the limit could not be read", err)
	default:
	}
	eng.mu.Lock()
	eng.limit, eng.limitErr = engine.Limit{N: 5, Source: "x"}, nil
	eng.mu.Unlock()
	select {
	case err := <-done:
		if err != nil || w.capacity != 5 {
			t.Fatalf("waitReady: %v, capacity %d", err, w.capacity)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("waitReady did not return once the limit was readable")
	}
}

// syncBuffer is a log sink safe for the handler's writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) lines(msg string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, l := range strings.Split(s.b.String(), "\n") {
		if strings.Contains(l, `msg="`+msg) {
			out = append(out, l)
		}
	}
	return out
}

// TestEngineDownAndRecovery: one log line when the engine goes down, one when it recovers
// (with how long it was down), the heartbeat state follows, and a recovered engine with
// another limit is registered again with it. Today's worker logged every failed beat and
// never the recovery.
func TestEngineDownAndRecovery(t *testing.T) {
	fc := &fakeControl{}
	eng := &fakeEngine{models: []string{"m"}, limit: engine.Limit{N: 8, Source: "x"}}
	w := newTestWorker(t, fc, eng)
	logs := &syncBuffer{}
	w.log = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	clock := time.Date(2026, 11, 30, 5, 0, 0, 0, time.UTC)
	w.now = func() time.Time { return clock }
	ctx := context.Background()

	w.beat(ctx, registry.StateHealthy)
	eng.mu.Lock()
	eng.down = true
	eng.mu.Unlock()
	for range 3 {
		w.beat(ctx, registry.StateHealthy)
		clock = clock.Add(2500 * time.Millisecond)
	}
	eng.mu.Lock()
	eng.down, eng.limit = false, engine.Limit{N: 4, Source: "y"} // restarted with a smaller limit
	eng.mu.Unlock()
	w.beat(ctx, registry.StateHealthy)
	w.beat(ctx, registry.StateHealthy)

	var states []string
	for _, hb := range fc.heartbeats {
		states = append(states, hb.State)
	}
	if got := strings.Join(states, ","); got != "healthy,unhealthy,unhealthy,unhealthy,healthy,healthy" {
		t.Errorf("heartbeat states %s", got)
	}
	if down := logs.lines("engine down"); len(down) != 1 {
		t.Errorf("want one 'engine down' line, got %q", down)
	}
	up := logs.lines("engine recovered")
	if len(up) != 1 || !strings.Contains(up[0], "down_for=7.5s") {
		t.Errorf("want one 'engine recovered' line with down_for=7.5s, got %q", up)
	}
	if got := fc.capacities; len(got) != 2 || got[0] != 8 || got[1] != 4 {
		t.Errorf("registered capacities %v, want [8 4] (registered again with the new limit)", got)
	}
}
