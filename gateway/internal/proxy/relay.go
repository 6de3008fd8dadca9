package proxy

import (
	"bytes"
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/maas-platform/maas/gateway/internal/panics"
	"github.com/maas-platform/maas/gateway/internal/sse"
	"github.com/maas-platform/maas/gateway/internal/upstream"
	"github.com/maas-platform/maas/pkg/apierr"
)

// relayUnary copies a backend's non-streamed answer to the client and reads its usage.
// Refusals (4xx, 5xx that are not retried) are relayed as the backend wrote them.
func (c *call) relayUnary(ctx *fasthttp.RequestCtx, resp *fasthttp.Response) {
	body := resp.Body()
	if resp.StatusCode() != 200 {
		c.relayRefusal(ctx, &resp.Header, body)
		return
	}
	c.status = 200
	ctx.SetStatusCode(200)
	if ct := resp.Header.ContentType(); len(ct) > 0 {
		ctx.Response.Header.SetContentTypeBytes(ct)
	}
	ctx.SetBody(body)
	c.use = parseUsage(member(body, "usage"))
	if !c.use.ok {
		c.estimated = true
		c.use.prompt = c.fields.PromptEstimate()
		if c.ep != epEmbeddings {
			c.use.completion = int64(len(member(body, "choices"))+3) / 4
		}
	}
}

// relayRefusal answers the client with a backend's refusal as the backend sent it, for
// streamed and non-streamed requests alike: its status, body, Content-Type and
// Retry-After (a 429's advice to rate-limited clients and their SDKs).
func (c *call) relayRefusal(ctx *fasthttp.RequestCtx, hd *fasthttp.ResponseHeader, body []byte) {
	status := hd.StatusCode()
	c.status, c.errType = status, "upstream_"+itoa(status)
	ctx.SetStatusCode(status)
	if ct := hd.ContentType(); len(ct) > 0 {
		ctx.Response.Header.SetContentTypeBytes(ct)
	}
	if ra := hd.Peek("Retry-After"); len(ra) > 0 {
		ctx.Response.Header.SetBytesV("Retry-After", ra)
	}
	ctx.SetBody(body)
}

// --- streaming ---

// bodyState is where the backend's response body stands, for closing it from a timer or
// a shutdown callback while the writer may be reading it.
type bodyState uint8

const (
	bodyAwaited bodyState = iota // request sent, headers not in: nothing to close yet
	bodyOpen                     // headers in: the body stream can be closed
	bodyClosing                  // closing was asked before the headers: close when they come
	bodyClosed                   // closed (or never opened and nothing more will come)
)

// relayState is how far the writer has taken the stream.
type relayState uint8

const (
	relayOpened    relayState = iota // the first event is read and held; nothing sent yet
	relayStreaming                   // events flow to the client; the idle timeout runs
	relayOver                        // the stream is over; out holds its last bytes
	relayEnded                       // resources returned and the call finished
)

type streamState struct {
	c    *call
	l    *upstream.Lease
	resp *fasthttp.Response
	body io.Reader // the response body stream
	rd   *sse.Reader
	// The timer bounds the first event, then the gap between events. Between events it is
	// not reset per event: it fires after the idle timeout and re-arms itself for the rest
	// when an event came meanwhile.
	timer     *time.Timer
	idleFor   time.Duration // the idle timeout (the timer's callback never reads the call)
	idle      atomic.Bool   // the timer bounds the gap between events (not the first event)
	epoch     time.Time     // start of the idle phase
	lastEvent atomic.Int64  // time of the last event, since epoch
	timedOut  atomic.Bool   // the timer closed the stream
	stopBase  func() bool   // unregisters the close on end of the call's base context

	closeMu sync.Mutex // guards body and resp against the timer and base callbacks
	bodyAt  bodyState

	first    []byte // data of the first event (copied)
	firstRaw []byte

	// Used only by the goroutine writing the response.
	state   relayState
	out     []byte // bytes for the client
	outPos  int    // sent part of out (Read)
	outcome upstream.Outcome
	mm      *modelMetrics
	sawDone bool // [DONE] seen
}

var readerPool = sync.Pool{New: func() any { return sse.NewReader(nil, 4<<20) }}

// closeStream ends the backend response; a read in flight returns at once (the
// connection is closed, which also tells the backend to stop generating). Before the
// headers arrived the request cannot be interrupted (the connection's sliding read
// deadline bounds that wait); the close then happens as soon as they arrive.
func (st *streamState) closeStream() {
	st.closeMu.Lock()
	defer st.closeMu.Unlock()
	switch st.bodyAt {
	case bodyAwaited:
		st.bodyAt = bodyClosing
	case bodyOpen:
		st.bodyAt = bodyClosed
		_ = st.resp.CloseBodyStream()
	}
}

// headersIn marks the body stream closable, closing it at once if that was asked for.
func (st *streamState) headersIn() {
	st.closeMu.Lock()
	defer st.closeMu.Unlock()
	switch st.bodyAt {
	case bodyAwaited:
		st.bodyAt = bodyOpen
	case bodyClosing:
		st.bodyAt = bodyClosed
		_ = st.resp.CloseBodyStream()
	}
}

// awaited reports that nothing asked to close the stream before its headers came (no
// first-byte timeout, no end of the call's base context): a request may be sent again.
func (st *streamState) awaited() bool {
	st.closeMu.Lock()
	defer st.closeMu.Unlock()
	return st.bodyAt == bodyAwaited
}

// timeout is the timer's callback: first-byte timeout, or idle timeout between events.
func (st *streamState) timeout() {
	if st.idle.Load() {
		if rest := st.idleFor - (time.Since(st.epoch) - time.Duration(st.lastEvent.Load())); rest > 0 {
			st.closeMu.Lock()
			if st.bodyAt < bodyClosing {
				st.timer.Reset(rest)
			}
			st.closeMu.Unlock()
			return
		}
	}
	st.timedOut.Store(true)
	st.closeStream()
}

// release returns the stream's resources; call once, after the last read.
func (st *streamState) release() {
	st.closeStream() // first: a timer callback re-arms the timer only while not closed
	st.timer.Stop()
	if st.stopBase != nil {
		st.stopBase()
	}
	if st.rd != nil {
		readerPool.Put(st.rd)
		st.rd = nil
	}
	st.closeMu.Lock()
	resp := st.resp
	st.resp = nil
	st.closeMu.Unlock()
	if resp != nil {
		fasthttp.ReleaseResponse(resp)
	}
}

// open sends the request and reads the first event; in are the client's headers.
func (st *streamState) open(in *fasthttp.RequestHeader) (failure, bool) {
	c, l := st.c, st.l
	req := fasthttp.AcquireRequest()
	req.Header.SetMethod(fasthttp.MethodPost)
	req.SetRequestURIBytes(c.upstreamURI(l.U.Base))
	c.setHeaders(&req.Header, in)
	req.Header.Set("Accept", "text/event-stream")
	req.SetBodyRaw(c.body.B)
	err := l.U.Stream.Do(req, st.resp)
	if err != nil && upstream.StaleStream(st.resp, err) && st.awaited() &&
		c.judge(failure{err: err, stale: true, timedOut: st.timedOut.Load()}).fresh {
		// The pooled connection was closed by the backend: once more on a new one.
		c.freshAgain(l)
		req.SetConnectionClose() // u.FreshStream keeps no connection
		err = l.U.FreshStream.Do(req, st.resp)
	}
	fasthttp.ReleaseRequest(req)
	if err != nil {
		return failure{err: err, timedOut: st.timedOut.Load()}, false
	}
	st.body = st.resp.BodyStream()
	st.headersIn()
	if st.body == nil { // a body fasthttp read whole (e.g. empty)
		st.body = bytes.NewReader(st.resp.Body())
	}
	if status := st.resp.StatusCode(); status != 200 {
		raw, _ := io.ReadAll(io.LimitReader(st.body, 1<<20))
		return failure{status: status, body: raw}, false
	}
	st.rd = readerPool.Get().(*sse.Reader)
	st.rd.Reset(st.body)
	raw, data, err := st.rd.Next()
	if err != nil {
		return failure{err: err, timedOut: st.timedOut.Load()}, false
	}
	st.firstRaw = append([]byte(nil), raw...)
	if data != nil {
		st.first = append([]byte(nil), data...)
	}
	return failure{}, true
}

// The stream's response body is the streamState itself: fasthttp's connection goroutine
// calls WriteTo, which relays events straight to the client's connection (every Write is
// one chunk, flushed). There is no pipe and no second goroutine per stream, so an event
// costs no goroutine hand-off and a held stream holds one goroutine and its buffers.
var _ fasthttp.BodyWriterTo = (*streamState)(nil)
var _ fasthttp.ReadCloserWithError = (*streamState)(nil)

// maxBatch bounds the bytes of events gathered into one write to the client.
const maxBatch = 32 << 10

// SupportsBodyWriteTo tells fasthttp to call WriteTo rather than Read.
func (st *streamState) SupportsBodyWriteTo() bool { return true }

// WriteTo relays events to w until the stream ends, the backend fails, or the client goes
// away (a failed write), which cancels the backend request at once.
func (st *streamState) WriteTo(w io.Writer) (n int64, err error) {
	defer func() {
		if v := recover(); v != nil {
			err = st.panicked(v, w)
		}
	}()
	for {
		last := st.produce()
		if len(st.out) > 0 {
			k, err := w.Write(st.out)
			n += int64(k)
			if err != nil && !last {
				st.clientGone()
				st.end()
				return n, err
			}
		}
		if last {
			st.end()
			return n, nil
		}
	}
}

// Read is the io.Reader form of WriteTo, for a server that does not use WriteTo; a client
// that went away is then seen in CloseWithError.
func (st *streamState) Read(p []byte) (n int, err error) {
	defer func() {
		if v := recover(); v != nil {
			err = st.panicked(v, nil)
		}
	}()
	for st.outPos >= len(st.out) {
		if st.state >= relayOver {
			return 0, io.EOF
		}
		st.produce()
		st.outPos = 0
	}
	n = copy(p, st.out[st.outPos:])
	st.outPos += n
	return n, nil
}

// CloseWithError is called by fasthttp once the response is written (err nil) or failed,
// and also when the response is dropped unwritten: it finishes the call if WriteTo did not.
func (st *streamState) CloseWithError(err error) (out error) {
	defer func() {
		if v := recover(); v != nil {
			out = st.panicked(v, nil)
		}
	}()
	if st.state < relayOver {
		st.clientGone()
	}
	st.end()
	return nil
}

// produce sets st.out to the client bytes of the next event, followed by every further
// event the reader already holds whole (a burst goes out in one write; nothing waits for
// bytes not yet received). last reports that the stream is over; st.out then ends with
// an error event if the backend failed.
func (st *streamState) produce() (last bool) {
	st.out = st.out[:0]
	if st.state == relayOpened {
		// The first write: the idle timeout between events starts, and the held first
		// event goes out.
		st.state = relayStreaming
		st.mm = st.c.h.m.model(st.c.label)
		st.epoch = time.Now()
		st.idle.Store(true)
		st.timer.Reset(st.idleFor)
		st.emit(st.firstRaw, st.first)
		if len(st.out) > 0 && !st.rd.Ready() {
			return false
		}
	}
	for {
		raw, data, err := st.rd.Next()
		if err != nil {
			return st.ended(err)
		}
		st.lastEvent.Store(int64(time.Since(st.epoch)))
		st.emit(raw, data)
		if len(st.out) > 0 && (len(st.out) >= maxBatch || !st.rd.Ready()) {
			return false
		}
	}
}

// emit appends one event for the client to st.out (nothing for the usage chunk we asked
// for ourselves).
func (st *streamState) emit(raw, data []byte) {
	switch {
	case data == nil:
		st.out = append(st.out, raw...)
	case bytes.Equal(data, sse.Done):
		st.sawDone = true
		st.out = append(st.out, "data: [DONE]\n\n"...)
	default:
		switch st.event(data, st.mm) {
		case passEvent:
			st.out = sse.AppendData(st.out, data)
		case stripUsage:
			c := st.c
			c.edit = appendWithout(c.edit[:0], data, "usage")
			st.out = sse.AppendData(st.out, c.edit)
		}
	}
}

// ended handles the end of the backend stream (err from the reader) and reports true.
func (st *streamState) ended(err error) bool {
	c := st.c
	st.state = relayOver
	if err == io.EOF && (st.sawDone || c.use.ok) { // complete (without [DONE] but with usage: accepted)
		c.status = 200
		if !c.use.ok {
			c.partialUsage()
		}
		return true
	}
	// The backend failed after the first byte: end with an OpenAI error event.
	v := c.judge(failure{err: err, timedOut: st.timedOut.Load(), midStream: true})
	if v.kind != "" {
		c.retryNote(c.lease, v.kind)
	}
	st.outcome = v.outcome
	c.status, c.errType = v.err.Kind.Status(), v.err.Kind.Type()
	st.out = sse.AppendData(st.out, v.err.Envelope())
	c.partialUsage()
	return true
}

// end returns the stream's resources and finishes the call (once).
func (st *streamState) end() {
	if st.state == relayEnded {
		return
	}
	st.state = relayEnded
	c, h := st.c, st.c.h
	// The connection goes back before the slot, so that the connections in use never
	// outnumber the backend's in-flight slots.
	st.release()
	if l := c.lease; l != nil {
		c.lease = nil
		l.Release(st.outcome)
	}
	h.m.streams.Dec()
	c.finish()
	st.c = nil // pooled again: never touched by this stream after this
}

// errStreamPanic ends a stream whose writer panicked.
var errStreamPanic = errors.New("proxy: stream writer panicked")

// panicked handles a panic of the stream writer (WriteTo, Read, CloseWithError), which
// runs on fasthttp's connection goroutine after the handler returned and which fasthttp
// would swallow without closing the stream: it records the panic, ends the client's
// stream with an error event when it can (w non-nil), and returns everything the call
// holds.
func (st *streamState) panicked(v any, w io.Writer) error {
	c := st.c
	if c == nil { // the call was finished: nothing is held any more
		return errStreamPanic
	}
	c.h.o.Panics.Record(panics.Stream, v, "request_id", c.reqID)
	if st.state == relayEnded { // the panic came from end itself
		st.release()
		c.abandon()
		st.c = nil
		return errStreamPanic
	}
	e := apierr.New(apierr.Internal, "internal error")
	c.status, c.errType = e.Kind.Status(), e.Kind.Type()
	st.outcome = upstream.Neutral
	c.partialUsage()
	st.end()
	if w != nil {
		func() {
			defer func() { _ = recover() }() // the writer itself may be what failed
			_, _ = w.Write(sse.AppendData(nil, e.Envelope()))
		}()
	}
	return errStreamPanic
}

// eventFate is what reaches the client of a data event.
type eventFate uint8

const (
	passEvent  eventFate = iota // the event as it came
	dropEvent                   // nothing: the usage chunk the gateway asked for itself
	stripUsage                  // the event without its usage member
)

// event inspects one data event: usage, token timing. When the gateway asked for usage
// itself (c.injected), the client sees none: the final usage chunk is dropped, and a
// usage object in a chunk with choices (vLLM puts one in every chunk when the request
// has stream_options.continuous_usage_stats) is removed from it. The last usage seen is
// the one the ledger takes.
func (st *streamState) event(data []byte, mm *modelMetrics) eventFate {
	c := st.c
	c.hook("event")
	emptyChoices, usageRaw := chunkFields(data)
	if len(usageRaw) > 0 && usageRaw[0] == '{' {
		if u := parseUsage(usageRaw); u.ok {
			c.use = u
		}
	}
	if !emptyChoices {
		now := c.h.o.Now()
		c.chunks++
		if c.ttft < 0 {
			c.ttft = now.Sub(c.start)
			mm.ttft.Observe(c.ttft.Seconds())
		} else {
			mm.itl.Observe(now.Sub(c.lastTok).Seconds())
		}
		c.lastTok = now
	}
	if c.injected && len(usageRaw) > 0 && usageRaw[0] == '{' {
		if emptyChoices {
			return dropEvent
		}
		return stripUsage
	}
	return passEvent
}

// clientGone: the client went away; the backend request is aborted now.
func (st *streamState) clientGone() {
	st.outcome = upstream.Neutral
	st.closeStream()
	c := st.c
	c.status, c.errType = 499, "client_closed_request"
	c.partialUsage()
}
