package upstream

import (
	"context"
	"time"

	"github.com/maas-platform/maas/pkg/apierr"
)

// notifyChanged wakes the requests of AwaitServed: the members or their health changed.
func (p *Pool) notifyChanged() {
	p.changeMu.Lock()
	close(p.changed)
	p.changed = make(chan struct{})
	p.changeMu.Unlock()
}

// changes returns the channel closed at the next Sync or UpdateLoad.
func (p *Pool) changes() <-chan struct{} {
	p.changeMu.Lock()
	defer p.changeMu.Unlock()
	return p.changed
}

// Serves reports whether some usable backend serves model (canonical name).
func (p *Pool) Serves(model string) bool {
	g := p.m.Load().byName[model]
	if g == nil {
		return false
	}
	for _, u := range g.ups {
		if u.usable() {
			return true
		}
	}
	return false
}

// AwaitServed waits until a usable backend serves model (canonical name): a LoRA adapter
// being loaded on demand appears in a backend's models, hence in a snapshot the pool is
// synced to. It wakes at each Sync and UpdateLoad, never polls. The request counts as
// queued while it waits (maas_gateway_queue_depth, and against QueueSize: a full queue
// refuses it at once). It returns nil once served; the queue's 503 when full; otherwise
// ctx's error when ctx ends first.
func (p *Pool) AwaitServed(ctx context.Context, model string) error {
	if p.Serves(model) {
		return nil
	}
	if p.o.QueueSize <= 0 || p.queued.Load()+p.awaiting.Load() >= int64(p.o.QueueSize) {
		p.metrics.queueRejected.WithLabelValues("full").Inc()
		return &apierr.Error{Kind: apierr.Unavailable, Message: "too many requests are waiting for backends; try again later",
			Code: "backends_busy", RetryAfter: time.Second, Err: ErrQueueFull}
	}
	p.awaiting.Add(1)
	defer p.awaiting.Add(-1)
	for {
		ch := p.changes()
		if p.Serves(model) { // checked after taking the channel: no change is missed
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
