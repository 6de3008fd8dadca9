package upstream

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/maas-platform/maas/gateway/internal/snapshot"
	"github.com/maas-platform/maas/pkg/apierr"
)

func TestAwaitServed(t *testing.T) {
	o := testOptions()
	o.QueueSize = 1
	p, _ := newTestPool(t, snapshot.PolicyLeastOutstanding, o, backend("b0", 1, 100))
	if err := p.AwaitServed(context.Background(), "m"); err != nil {
		t.Fatalf("served model: %v", err)
	}

	// A model no backend serves: the wait counts as queued, and takes the queue's last place.
	done := make(chan error, 1)
	go func() { done <- p.AwaitServed(context.Background(), "adapter") }()
	deadline := time.Now().Add(5 * time.Second)
	for p.QueueDepth() != 1 {
		if time.Now().After(deadline) {
			t.Fatal("the wait is not counted as queued")
		}
		time.Sleep(time.Millisecond)
	}
	var ae *apierr.Error
	if err := p.AwaitServed(context.Background(), "other"); !errors.As(err, &ae) || !errors.Is(err, ErrQueueFull) {
		t.Errorf("queue full: %v", err)
	}
	p.UpdateLoad(nil) // a change that does not serve it: still waiting
	select {
	case err := <-done:
		t.Fatalf("ended before a backend served it: %v", err)
	case <-time.After(20 * time.Millisecond):
	}
	b := snapshot.NewBuilder(now)
	b.AddModel(&snapshot.Model{Name: "m", Enabled: true, MaxOutputTokens: 16})
	b.AddModel(&snapshot.Model{Name: "adapter", Enabled: true, MaxOutputTokens: 16, BaseModel: "m"})
	be := backend("b0", 1, 100)
	be.Models = []string{"m", "adapter"}
	b.AddBackend(be)
	p.Sync(b.Build())
	if err := <-done; err != nil {
		t.Fatalf("after the swap: %v", err)
	}
	if p.QueueDepth() != 0 {
		t.Errorf("queue depth %d after", p.QueueDepth())
	}

	ctx, cancel := context.WithCancel(context.Background())
	go func() { done <- p.AwaitServed(ctx, "gone") }()
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: %v", err)
	}
}
