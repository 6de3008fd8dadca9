package trainer

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/maas-platform/maas/pkg/training"
)

// Bounds of what one job sends to control.
const (
	maxEvents     = 1000   // message events per job; the rest are counted once
	maxMetrics    = 200000 // step metrics waiting to be sent (a control outage); oldest dropped past it
	maxPerRequest = 1000   // control's limit per events call
)

// reporter collects a trainer's progress and sends it to control in batches, from one
// goroutine, every flush interval. It is safe for concurrent use.
type reporter struct {
	c        *client
	task     *training.Task
	log      *slog.Logger
	interval time.Duration
	onLost   func() // called once when control says the lease is lost

	mu            sync.Mutex
	events        []training.Event
	metrics       []training.Metric
	checkpoints   []training.CheckpointRequest
	sentEvents    int
	droppedEvents int
	trainedTokens int64
	last          *training.Metric // the latest step's figures
	lost          bool

	stop chan struct{}
	done chan struct{}
}

func newReporter(c *client, t *training.Task, log *slog.Logger, interval time.Duration, onLost func()) *reporter {
	r := &reporter{c: c, task: t, log: log, interval: interval, onLost: onLost,
		stop: make(chan struct{}), done: make(chan struct{})}
	return r
}

// add records one progress line; it never blocks on control.
func (r *reporter) add(p Progress) {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case p.Metric != nil:
		m := *p.Metric
		if m.TotalSteps == 0 && r.last != nil {
			m.TotalSteps = r.last.TotalSteps // a trainer may state it once
		}
		if r.last != nil && r.last.Step == m.Step {
			// A second line for the same step (validation after training, say): control
			// replaces a step's figures, so carry what the first line said.
			m.TrainLoss = cmp.Or(m.TrainLoss, r.last.TrainLoss)
			m.ValidLoss = cmp.Or(m.ValidLoss, r.last.ValidLoss)
			m.TrainMeanTokenAccuracy = cmp.Or(m.TrainMeanTokenAccuracy, r.last.TrainMeanTokenAccuracy)
			m.ValidMeanTokenAccuracy = cmp.Or(m.ValidMeanTokenAccuracy, r.last.ValidMeanTokenAccuracy)
		}
		r.last = &m
		if len(r.metrics) >= maxMetrics {
			r.metrics = r.metrics[1:]
		}
		r.metrics = append(r.metrics, m)
		if p.Checkpoint {
			r.checkpoints = append(r.checkpoints, training.CheckpointRequest{Step: m.Step, Metrics: m})
		}
	case p.Event != nil:
		if r.sentEvents+len(r.events) >= maxEvents {
			r.droppedEvents++
			return
		}
		r.events = append(r.events, *p.Event)
	case p.TrainedTokens > 0:
		r.trainedTokens = p.TrainedTokens
	}
}

// event records a message of the worker's own.
func (r *reporter) event(level, msg string) {
	r.add(Progress{Event: &training.Event{Level: level, Message: msg}})
}

func (r *reporter) tokens() int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.trainedTokens
}

// run sends batches until close.
func (r *reporter) run(ctx context.Context) {
	defer close(r.done)
	t := time.NewTicker(r.interval)
	defer t.Stop()
	for {
		select {
		case <-r.stop:
			return
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := r.flush(ctx); err != nil && !errors.Is(err, errLeaseLost) && ctx.Err() == nil {
			r.log.Warn("send training progress to control; will retry", "err", err)
		}
	}
}

// close stops the background sends and sends what is left, retrying transient failures
// until ctx ends. It returns errLeaseLost when control refused the lease.
func (r *reporter) close(ctx context.Context) error {
	close(r.stop)
	<-r.done
	r.mu.Lock()
	if r.droppedEvents > 0 {
		r.events = append(r.events, training.Event{Level: "warn", Message: fmt.Sprintf("%d more trainer messages not shown", r.droppedEvents)})
		r.droppedEvents = 0
	}
	r.mu.Unlock()
	return retry(ctx, 5, func() error { return r.flush(ctx) })
}

// flush sends everything pending: events and metrics in batches, then the checkpoints
// (whose metrics are then known to control). What could not be sent is kept for the next
// flush.
func (r *reporter) flush(ctx context.Context) error {
	for {
		r.mu.Lock()
		if r.lost {
			r.mu.Unlock()
			return errLeaseLost
		}
		ne, nm := min(len(r.events), maxPerRequest), min(len(r.metrics), maxPerRequest)
		req := training.EventsRequest{Events: r.events[:ne:ne], Metrics: r.metrics[:nm:nm]}
		var cps []training.CheckpointRequest
		if ne == len(r.events) && nm == len(r.metrics) {
			cps = r.checkpoints
		}
		r.mu.Unlock()
		if ne == 0 && nm == 0 && len(cps) == 0 {
			return nil
		}
		if ne > 0 || nm > 0 {
			if err := r.c.postEvents(ctx, r.task, req); err != nil {
				return r.failed(err)
			}
			r.mu.Lock()
			r.events, r.metrics = r.events[ne:], r.metrics[nm:]
			r.sentEvents += ne
			r.mu.Unlock()
		}
		for len(cps) > 0 {
			if err := r.c.postCheckpoint(ctx, r.task, cps[0]); err != nil {
				return r.failed(err)
			}
			cps = cps[1:]
			r.mu.Lock()
			r.checkpoints = r.checkpoints[1:]
			r.mu.Unlock()
		}
	}
}

func (r *reporter) failed(err error) error {
	if errors.Is(err, errLeaseLost) {
		r.mu.Lock()
		first := !r.lost
		r.lost = true
		r.mu.Unlock()
		if first && r.onLost != nil {
			r.onLost()
		}
	}
	return err
}

// retry runs f up to attempts times while it fails with a transient error, waiting 0.5 s,
// 1 s, 2 s… between tries.
func retry(ctx context.Context, attempts int, f func() error) error {
	wait := 500 * time.Millisecond
	for i := 1; ; i++ {
		err := f()
		if err == nil || permanent(err) || i >= attempts {
			return err
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return errors.Join(err, ctx.Err())
		case <-t.C:
		}
		wait *= 2
	}
}
