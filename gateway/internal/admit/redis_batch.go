package admit

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/maas-platform/maas/gateway/internal/panics"
)

// Admissions are batched: an admitter goroutine sends every admission that is waiting in one
// call of admitScript, then takes whatever arrived meanwhile. A lone request is
// sent at once (no wait for company); under load a round trip carries many, which is what
// makes the global tier cheap: one write and one read for the batch, in the gateway and in
// Redis, instead of one per request, and each subject's state read and written once per
// batch (one script handling the batch was measured against a pipeline of one script per
// admission: 5 Redis commands per request against 15, TestRedisCallsPerRequest). AdmitPipelines admitters (2 by default) keep as many
// round trips in flight, so that the gateway's side of one overlaps Redis's side of another
// and one slow round trip does not hold every request.
//
// A request waits for its reply at most RedisTimeout. The admitter settles every fate of an
// admission whose request stopped waiting: not sent yet → never sent; sent and admitted, or
// its fate unknown (the round trip failed) → undone in the background (undoScript), so a
// request decided by the local tier is never also charged in Redis.

// Call states.
const (
	callWaiting   int32 = iota
	callDone            // reply delivered (res, err set before the state changes)
	callAbandoned       // the request stopped waiting
)

// call is one admission on its way through the admitter.
type call struct {
	keys  []string
	args  []any
	state atomic.Int32
	done  chan struct{}
	res   []int64
	err   error
}

var (
	errNotSent = errors.New("admit: redis tier not sending (outage or shutdown)")
	errWait    = errors.New("admit: redis reply not in time")
)

// call runs one admission script through the admitter and returns its reply. An error means
// the request must be decided locally; the admitter undoes the admission if it may have run.
func (r *redisTier) call(ctx context.Context, keys []string, args []any) ([]int64, error) {
	c := &call{keys: keys, args: args, done: make(chan struct{})}
	timer := time.NewTimer(r.timeout)
	defer timer.Stop()
	select {
	case r.calls <- c:
	case <-timer.C:
		return nil, errWait
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-r.l.stop:
		return nil, errNotSent
	}
	var err error
	select {
	case <-c.done:
		return c.res, c.err
	case <-timer.C:
		err = errWait
	case <-ctx.Done():
		err = ctx.Err()
	}
	if !c.state.CompareAndSwap(callWaiting, callAbandoned) {
		<-c.done // delivered meanwhile
		return c.res, c.err
	}
	return nil, err
}

// admitter sends the waiting admissions, batch after batch, until the Limiter stops.
func (r *redisTier) admitter() {
	defer r.l.wg.Done()
	batch := make([]*call, 0, r.batchMax)
	sent := make([]*call, 0, r.batchMax)
	for {
		select {
		case c := <-r.calls:
			batch = append(batch[:0], c)
		case <-r.l.stop:
			for {
				select {
				case c := <-r.calls:
					r.deliver(c, nil, errNotSent, false)
					continue
				default:
				}
				return
			}
		}
	fill:
		for len(batch) < r.batchMax {
			select {
			case c := <-r.calls:
				batch = append(batch, c)
			default:
				break fill
			}
		}
		sent = r.send(batch, sent[:0])
		clear(batch)
		clear(sent)
	}
}

// send runs one round trip for batch; sent is scratch space. A panic on bad data is recorded
// and costs the batch its Redis decision: its requests are decided locally and undone here.
func (r *redisTier) send(batch, sent []*call) []*call {
	defer func() {
		if v := recover(); v != nil {
			r.l.o.Panics.Record(panics.Admit, v, "loop", "admitter")
			for _, c := range batch {
				if c.state.Load() == callWaiting {
					r.deliver(c, nil, fmt.Errorf("admit: panic: %v", v), true)
				}
			}
		}
	}()
	if r.beforeSend != nil {
		r.beforeSend()
	}
	up := r.health.up.Load()
	for _, c := range batch {
		switch {
		case c.state.Load() == callAbandoned: // gave up before it was sent: nothing to undo
		case !up:
			r.deliver(c, nil, errNotSent, false)
		default:
			sent = append(sent, c)
		}
	}
	if len(sent) == 0 {
		return sent
	}
	ctx, cancel := context.WithTimeout(context.Background(), r.timeout)
	defer cancel()
	begin := time.Now()
	var keys []string
	args := make([]any, 1, 1+len(sent)*21)
	args[0] = len(sent)
	for _, c := range sent {
		keys = append(keys, c.keys...)
		args = append(args, (len(c.keys)-1)/2)
		args = append(args, c.args...)
	}
	replies, err := admitScript.EvalSha(ctx, r.client, keys, args...).Slice()
	if err != nil && redis.HasErrorPrefix(err, "NOSCRIPT") {
		// The script cache was flushed (Redis restarted): load it and send again; it never
		// ran, and the same ids would charge once anyway.
		if err = admitScript.Load(ctx, r.client).Err(); err == nil {
			replies, err = admitScript.Run(ctx, r.client, keys, args...).Slice()
		}
	}
	if err == nil && len(replies) != len(sent) {
		err = fmt.Errorf("admit: %d replies to %d admissions", len(replies), len(sent))
	}
	if err != nil {
		var reply redis.Error
		if errors.As(err, &reply) {
			r.l.log.Error("quota redis refused admissions", "count", len(sent), "err", err)
		}
		r.failed(err)
		for _, c := range sent {
			r.deliver(c, nil, err, true)
		}
		return sent
	}
	r.health.success()
	r.l.m.redisSeconds.Observe(time.Since(begin).Seconds())
	r.l.m.batch.Observe(float64(len(sent)))
	for i, c := range sent {
		res, err := int64s(replies[i])
		r.deliver(c, res, err, err != nil) // an unreadable reply may hide an admission
	}
	return sent
}

// int64s converts one admission's reply.
func int64s(v any) ([]int64, error) {
	vs, ok := v.([]any)
	if !ok {
		return nil, fmt.Errorf("admit: reply %v is not an array", v)
	}
	out := make([]int64, len(vs))
	for i, x := range vs {
		n, ok := x.(int64)
		if !ok {
			return nil, fmt.Errorf("admit: reply %v is not integers", v)
		}
		out[i] = n
	}
	return out, nil
}

// deliver hands a reply to its request, or, if the request stopped waiting, undoes what the
// admission may have charged. mayHaveRun says the fate of a failed call is unknown.
func (r *redisTier) deliver(c *call, res []int64, err error, mayHaveRun bool) {
	c.res, c.err = res, err
	if c.state.CompareAndSwap(callWaiting, callDone) {
		close(c.done)
		if mayHaveRun { // the request falls back to the local tier
			r.undo(c.keys, c.args)
		}
		return
	}
	if mayHaveRun || (err == nil && len(res) >= 2 && res[0] == 0) {
		r.undo(c.keys, c.args)
	}
}
