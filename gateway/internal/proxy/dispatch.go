package proxy

import (
	"context"
	"errors"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/maas-platform/maas/gateway/internal/upstream"
)

// dispatch sends the request to a backend, failing over to another one while the client
// has seen nothing: on transport errors, timeouts and 502/503/504. One loop serves both
// kinds of request; an attempt is exchange (non-streamed) or openStream. streaming
// reports that a stream was committed: its writer owns the call from then on.
func (c *call) dispatch(ctx *fasthttp.RequestCtx) (streaming bool, err error) {
	h := c.h
	deadline := c.start.Add(h.o.RequestTimeout)
	acq := context.Background()
	if c.fields.Stream {
		c.base, c.cancelBase = context.WithTimeout(h.o.BaseContext, h.o.RequestTimeout)
		acq = c.base
	}
	var tried []*upstream.Upstream
	var lastErr error
	for {
		l, err := c.acquire(ctx, acq, tried)
		if err != nil {
			if lastErr != nil {
				return false, lastErr
			}
			return false, err
		}
		var r attempt
		var v verdict
		if c.fields.Stream {
			r, v = c.openStream(ctx, l)
		} else {
			r, v = c.exchange(ctx, l, deadline)
		}
		switch r {
		case committed:
			return true, nil
		case answered:
			return false, nil
		}
		if v.kind != "" {
			c.retryNote(l, v.kind)
		}
		l.Release(v.outcome)
		c.lease = nil
		if !v.retry {
			return false, v.err
		}
		lastErr = v.err
		if c.attempts >= h.o.MaxAttempts || acq.Err() != nil || !time.Now().Before(deadline) {
			return false, lastErr
		}
		tried = append(tried, l.U)
		h.m.retries.WithLabelValues(c.label).Inc()
	}
}

// attempt is how an attempt on one backend ended.
type attempt uint8

const (
	failed    attempt = iota // nothing reached the client; the verdict says what next
	answered                 // the backend's answer (or refusal) was relayed whole
	committed                // a stream was committed: its writer owns the call
)

// acquire takes a slot on a backend serving the model, other than those tried. A LoRA
// adapter is served by the backends that loaded it (they list it among their models); one
// that no backend serves is loaded on demand first (ondemand.go).
func (c *call) acquire(rc *fasthttp.RequestCtx, ctx context.Context, tried []*upstream.Upstream) (*upstream.Lease, error) {
	c.attempts++
	r := upstream.Request{Model: c.model, User: c.key.UserID, Affinity: c.fields.affinity, Exclude: tried}
	l, err := c.h.o.Pool.Acquire(ctx, r)
	if err != nil && c.model.BaseModel != "" && len(tried) == 0 && errors.Is(err, upstream.ErrNoBackend) {
		if err = c.awaitAdapter(rc, ctx, err); err == nil {
			l, err = c.h.o.Pool.Acquire(ctx, r)
		}
	}
	if err != nil {
		return nil, err
	}
	c.lease, c.backend = l, l.U.ID
	return l, nil
}

func (c *call) retryNote(l *upstream.Lease, kind string) {
	c.h.m.upstreamErr.WithLabelValues(l.U.ID, kind).Inc()
}

// judge maps a failure of this call's attempt (failure.go), noting a shutdown.
func (c *call) judge(f failure) verdict {
	if f.err != nil || f.midStream {
		f.shutdown = c.h.o.BaseContext.Err() != nil
	}
	return judge(f)
}

// exchange sends a non-streamed request to l's backend and relays its answer. On a
// failure that another backend may not see, the lease is still held (dispatch releases it).
func (c *call) exchange(ctx *fasthttp.RequestCtx, l *upstream.Lease, deadline time.Time) (attempt, verdict) {
	req := fasthttp.AcquireRequest()
	resp := fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.Header.SetMethod(fasthttp.MethodPost)
	req.SetRequestURIBytes(c.upstreamURI(l.U.Base))
	c.setHeaders(&req.Header, &ctx.Request.Header)
	req.SetBodyRaw(c.body.B)
	c.hook("exchange")
	if c.watch == nil {
		c.watch = newClientWatch(&c.guard, c.h.o.BaseContext)
	}
	c.watch.arm(ctx)
	f := c.roundTrip(l.U, req, resp, deadline, false)
	if f.err != nil && c.judge(f).fresh {
		c.freshAgain(l)
		resp.Reset()
		f = c.roundTrip(l.U, req, resp, deadline, true)
	}
	c.watch.disarm()
	if f.err != nil {
		return failed, c.judge(f)
	}
	outcome := upstream.Success
	if status := resp.StatusCode(); status != 200 {
		v := c.judge(failure{status: status, body: resp.Body()})
		if v.retry {
			return failed, v
		}
		if v.kind != "" {
			c.retryNote(l, v.kind)
		}
		outcome = v.outcome
	}
	l.Release(outcome)
	c.lease = nil
	c.relayUnary(ctx, resp)
	return answered, verdict{}
}

// freshAgain notes a stale connection to l's backend before the request is sent again on
// a new one, and closes the backend's other idle connections: they were opened before the
// backend closed this one (a restarted engine closed them all).
func (c *call) freshAgain(l *upstream.Lease) {
	c.retryNote(l, "stale")
	l.U.DropIdle()
}

// openStream opens the stream on l's backend and reads its first event before anything
// is sent to the client, so that failures up to then fail over to another backend. On
// success the stream is committed: the client's response body is the stream's writer. A
// refusal (a status the backend's answer keeps, judge) is relayed as it came.
func (c *call) openStream(ctx *fasthttp.RequestCtx, l *upstream.Lease) (attempt, verdict) {
	h := c.h
	st := &streamState{c: c, l: l, resp: fasthttp.AcquireResponse(), idleFor: h.o.StreamIdleTimeout}
	st.resp.StreamBody = true
	st.timer = time.AfterFunc(h.o.FirstByteTimeout, st.timeout)
	st.stopBase = context.AfterFunc(c.base, st.closeStream)
	f, ok := st.open(&ctx.Request.Header)
	if !ok {
		v := c.judge(f)
		if v.relay {
			if v.kind != "" {
				c.retryNote(l, v.kind)
			}
			c.relayRefusal(ctx, &st.resp.Header, f.body)
			st.release()
			l.Release(v.outcome)
			c.lease = nil
			return answered, verdict{}
		}
		st.release()
		return failed, v
	}
	// Committed: from here on the client receives bytes.
	ctx.SetStatusCode(200)
	ctx.Response.Header.SetContentType("text/event-stream")
	ctx.Response.Header.Set("Cache-Control", "no-cache")
	ctx.Response.Header.Set("X-Accel-Buffering", "no")
	_ = ctx.SetWriteDeadline(c.start.Add(h.o.RequestTimeout))
	h.m.streams.Inc()
	ctx.Response.SetBodyStream(st, -1)
	return committed, verdict{}
}
