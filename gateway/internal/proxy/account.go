package proxy

import (
	"github.com/valyala/bytebufferpool"

	"github.com/maas-platform/maas/gateway/internal/ledger"
	"github.com/maas-platform/maas/gateway/internal/panics"
	"github.com/maas-platform/maas/gateway/internal/upstream"
)

// partialUsage applies the billing policy for a stream that did not complete: the prompt
// plus the completion tokens produced until then (one per token event), marked estimated
// unless the backend's own usage arrived.
func (c *call) partialUsage() {
	if c.use.ok && c.status == 200 {
		return
	}
	if !c.use.ok {
		c.use.prompt = c.fields.PromptEstimate()
	}
	if c.use.completion < c.chunks {
		c.use.completion = c.chunks
	}
	c.use.ok = true
	c.estimated = true
}

// finish ends the call: it returns what the call still holds (backend slot, base
// context), settles the quota, writes the usage record, metrics and the access log line,
// and returns the call to the pool.
func (c *call) finish() {
	h := c.h
	c.finishing = true
	now := h.o.Now()
	dur := now.Sub(c.start)
	c.abandonBackend()
	if c.status == 0 {
		c.status = 200
	}
	c.settle(c.use.prompt + c.use.completion)
	label := c.label
	if label == "" {
		label = unknownModel
	}
	h.m.inFlight.Dec()
	h.m.request(label, c.backend, c.status)
	mm := h.m.model(label)
	mm.duration.Observe(dur.Seconds())
	if c.use.prompt > 0 {
		mm.prompt.Add(float64(c.use.prompt))
	}
	if c.use.completion > 0 {
		mm.completion.Add(float64(c.use.completion))
	}
	endpoint := c.path()
	if c.service != "" {
		endpoint = c.service + ":" + endpoint // made for the user by a platform service
	}
	if c.key != nil && h.o.Ledger != nil {
		c.record(ledger.Record{
			RequestID: c.reqID, ClientRequestID: c.clientReqID, CreatedAt: c.start, UserID: c.key.UserID, KeyID: c.key.ID,
			Model: c.reqModel, Backend: c.backend, Endpoint: endpoint, Status: c.status,
			PromptTokens: c.use.prompt, CompletionTokens: c.use.completion, Estimated: c.estimated,
			Streamed: c.fields.Stream, TTFT: c.ttft, Duration: dur, ErrorType: c.errType,
		})
	}
	if h.o.AccessLog {
		f := accessFields{requestID: c.reqID, clientRequestID: c.clientReqID, endpoint: endpoint, model: label, backend: c.backend, status: c.status,
			duration: dur, stream: c.fields.Stream, prompt: c.use.prompt, completion: c.use.completion, attempts: c.attempts}
		if c.key != nil {
			f.userID, f.keyID = c.key.UserID, c.key.ID
		}
		h.access.write(now, &f)
	}
	if c.body != nil {
		bytebufferpool.Put(c.body)
	}
	c.reset()
	h.calls.Put(c)
}

// record hands the usage record to the ledger; a panic there is recorded and costs this
// record only.
func (c *call) record(r ledger.Record) {
	defer func() {
		if v := recover(); v != nil {
			c.h.o.Panics.Record(panics.Ledger, v, "request_id", r.RequestID)
		}
	}()
	c.h.o.Ledger.Add(r)
}

// abandonBackend returns the backend slot (no health signal) and ends the base context.
func (c *call) abandonBackend() {
	if c.lease != nil {
		l := c.lease
		c.lease = nil
		l.Release(upstream.Neutral)
	}
	if c.cancelBase != nil {
		c.cancelBase()
		c.cancelBase, c.base = nil, nil
	}
}

// abandon releases what a call still holds after a panic in finish itself: the backend
// slot, the quota ticket (settled with the reservation's tokens used so far) and the body
// buffer. The call is not pooled again (its state is unknown); metrics are not retried.
func (c *call) abandon() {
	c.abandonBackend()
	c.settle(c.use.prompt + c.use.completion)
	if c.body != nil {
		b := c.body
		c.body = nil
		bytebufferpool.Put(b)
	}
}
