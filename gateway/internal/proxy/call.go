package proxy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/bytebufferpool"
	"github.com/valyala/fasthttp"

	"github.com/maas-platform/maas/gateway/internal/ledger"
	"github.com/maas-platform/maas/gateway/internal/snapshot"
	"github.com/maas-platform/maas/gateway/internal/sse"
	"github.com/maas-platform/maas/gateway/internal/upstream"
	"github.com/maas-platform/maas/pkg/apierr"
)

// call is one inference request. It is pooled; a streamed call lives until its stream
// writer ends, after the fasthttp handler returned, so it never keeps the RequestCtx.
type call struct {
	h        *Handler
	start    time.Time
	reqID    string
	ep       endpoint
	key      *snapshot.Key
	model    *snapshot.Model
	label    string // model metric label
	reqModel string // model as asked, for the ledger when unresolved

	body      *bytebufferpool.ByteBuffer // body sent upstream (a copy, possibly edited)
	stream    bool
	injected  bool // include_usage added by us: strip the usage chunk
	maxTokens int64
	promptLen int // bytes of the prompt field
	affinity  uint64
	forward   [][2][]byte // client headers passed to the backend (X-*)

	ticket   Ticket
	lease    *upstream.Lease
	backend  string
	attempts int

	status    int
	errType   string
	use       usage
	estimated bool
	ttft      time.Duration
	chunks    int64 // token events seen (fallback count)
	lastTok   time.Time
}

func (c *call) reset() {
	*c = call{forward: c.forward[:0]}
}

func (h *Handler) serve(ctx *fasthttp.RequestCtx, ep endpoint) {
	c := h.calls.Get().(*call)
	c.h, c.ep, c.start, c.ttft = h, ep, h.o.Now(), -1
	c.reqID = h.RequestID(ctx)
	h.m.inFlight.Inc()
	err := c.prepare(ctx)
	if err == nil {
		err = c.admit()
	}
	if err == nil {
		if c.stream {
			err = c.dispatchStream(ctx)
			if err == nil {
				return // the stream writer finishes the call
			}
		} else {
			err = c.dispatchUnary(ctx)
		}
	}
	if err != nil {
		e := h.writeError(ctx, err)
		c.status, c.errType = e.Kind.Status(), e.Kind.Type()
		if c.lease == nil && c.attempts == 0 {
			h.m.rejections.WithLabelValues(reason(e)).Inc()
		}
	}
	c.finish()
}

// prepare authenticates the key and reads the request.
func (c *call) prepare(ctx *fasthttp.RequestCtx) error {
	h := c.h
	snap := h.o.Snapshots.Current()
	if snap == nil {
		return notReady()
	}
	k, err := h.authenticate(snap, ctx.Request.Header.Peek("Authorization"), c.start)
	if err != nil {
		return err
	}
	c.key = k
	body := ctx.PostBody()
	if len(bytes.TrimSpace(body)) == 0 {
		return apierr.New(apierr.InvalidRequest, "request body is empty; send a JSON object")
	}
	var modelRaw, streamRaw, soRaw []byte
	soStart, soEnd := -1, -1
	var perr error
	valid, isObj := scanObject(body, func(key []byte, s, e int) {
		if perr != nil {
			return
		}
		v := body[s:e]
		switch string(key) {
		case "model":
			modelRaw = v
		case "stream":
			streamRaw = v
		case "stream_options":
			soRaw, soStart, soEnd = v, s, e
		case "max_tokens", "max_completion_tokens":
			if string(v) == "null" {
				break
			}
			n, ok := intValue(v)
			if !ok || n < 0 {
				perr = apierr.Param(string(key), "%s must be a non-negative integer", key)
				return
			}
			c.maxTokens = n
		case "messages", "prompt", "input":
			c.promptLen += e - s
			if c.affinity == 0 {
				c.affinity = upstream.AffinityKey(v[:min(len(v), 512)])
			}
		}
	})
	if !valid {
		var v any
		msg := "request body is not valid JSON"
		if err := json.Unmarshal(body, &v); err != nil {
			msg += ": " + err.Error()
		}
		return apierr.New(apierr.InvalidRequest, "%s", msg)
	}
	if !isObj {
		return apierr.New(apierr.InvalidRequest, "request body must be a JSON object")
	}
	if perr != nil {
		return perr
	}
	if modelRaw == nil || string(modelRaw) == "null" {
		return apierr.Param("model", "you must provide a model parameter")
	}
	name, ok := stringValue(modelRaw)
	if !ok {
		var s string
		if err := json.Unmarshal(modelRaw, &s); err != nil {
			return apierr.Param("model", "model must be a string")
		}
		name = []byte(s)
	}
	if len(name) == 0 {
		return apierr.Param("model", "you must provide a model parameter")
	}
	switch string(streamRaw) {
	case "", "null", "false":
	case "true":
		c.stream = c.ep != epEmbeddings
	default:
		return apierr.Param("stream", "stream must be a boolean")
	}
	m := snap.Model(string(name))
	if m == nil || !m.Enabled {
		c.reqModel = string(name)
		return &apierr.Error{Kind: apierr.NotFound, Param: "model", Code: "model_not_found",
			Message: "the model `" + truncate(string(name), 128) + "` does not exist or is not available"}
	}
	c.model, c.label, c.reqModel = m, m.Name, m.Name
	if !m.VisibleTo(k.User) || !k.AllowsModel(m, string(name)) {
		return &apierr.Error{Kind: apierr.PermissionDenied, Param: "model", Code: "model_not_allowed",
			Message: "this API key may not use the model `" + m.Name + "`"}
	}
	if m.Policy != snapshot.PolicyPrefixAffinity {
		c.affinity = 0
	}

	// The body goes upstream unchanged, unless a stream needs include_usage.
	c.body = bytebufferpool.Get()
	if c.stream && !includesUsage(soRaw) {
		c.injected = true
		c.body.B = injectIncludeUsage(c.body.B[:0], body, soRaw, soStart, soEnd)
	} else {
		c.body.B = append(c.body.B[:0], body...)
	}
	// Client headers a backend may use (X-*, never our own identity headers).
	ctx.Request.Header.VisitAll(func(k, v []byte) {
		if len(k) > 2 && (k[0] == 'X' || k[0] == 'x') && k[1] == '-' && !equalFoldPrefix(k, "x-maas-") &&
			!equalFoldASCII(k, "X-Request-Id") && !equalFoldPrefix(k, "x-forwarded-") {
			c.forward = append(c.forward, [2][]byte{append([]byte(nil), k...), append([]byte(nil), v...)})
		}
	})
	return nil
}

func equalFoldPrefix(b []byte, p string) bool {
	return len(b) >= len(p) && equalFoldASCII(b[:len(p)], p)
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

func includesUsage(so []byte) bool {
	if len(so) == 0 || so[0] != '{' {
		return false
	}
	return string(member(so, "include_usage")) == "true"
}

// injectIncludeUsage writes body with stream_options.include_usage set to true; every
// other field is kept byte for byte.
func injectIncludeUsage(dst, body, so []byte, soStart, soEnd int) []byte {
	if soStart < 0 || len(so) == 0 || so[0] != '{' {
		if soStart >= 0 { // stream_options: null (or not an object): replace the value
			dst = append(dst, body[:soStart]...)
			dst = append(dst, `{"include_usage":true}`...)
			return append(dst, body[soEnd:]...)
		}
		i := bytes.IndexByte(body, '{')
		dst = append(dst, body[:i+1]...)
		dst = append(dst, `"stream_options":{"include_usage":true},`...)
		return append(dst, body[i+1:]...)
	}
	dst = append(dst, body[:soStart]...)
	dst = append(dst, `{"include_usage":true`...)
	eachMember(so, func(k []byte, s, e int) bool {
		if string(k) != "include_usage" {
			dst = append(dst, ',', '"')
			dst = append(dst, k...)
			dst = append(dst, '"', ':')
			dst = append(dst, so[s:e]...)
		}
		return true
	})
	dst = append(dst, '}')
	return append(dst, body[soEnd:]...)
}

// promptEstimate is a rough token count of the prompt (about 4 bytes per token).
func (c *call) promptEstimate() int64 { return int64(c.promptLen+3) / 4 }

func (c *call) reservation() int64 {
	out := c.maxTokens
	if out == 0 && c.ep != epEmbeddings {
		out = int64(c.model.MaxOutputTokens)
	}
	return c.promptEstimate() + out
}

func (c *call) admit() error {
	if c.h.o.Quota == nil {
		return nil
	}
	t, err := c.h.o.Quota.Admit(context.Background(), c.key, c.reservation())
	if err != nil {
		return err
	}
	c.ticket = t
	return nil
}

func (c *call) path() string { return endpointPaths[c.ep] }

// classify maps a transport error to an apierr and reports whether a retry may help.
func classify(err error, timedOut bool) *apierr.Error {
	var ne net.Error
	switch {
	case timedOut || errors.Is(err, fasthttp.ErrTimeout) || (errors.As(err, &ne) && ne.Timeout()):
		return &apierr.Error{Kind: apierr.UpstreamTimeout, Message: "the backend did not answer in time", Err: err}
	default:
		return &apierr.Error{Kind: apierr.BadGateway, Message: "the backend could not be reached", Err: err}
	}
}

func retryableStatus(s int) bool { return s == 502 || s == 503 || s == 504 }

func (c *call) acquire(ctx context.Context, tried []*upstream.Upstream) (*upstream.Lease, error) {
	c.attempts++
	l, err := c.h.o.Pool.Acquire(ctx, upstream.Request{Model: c.model, User: c.key.UserID, Affinity: c.affinity, Exclude: tried})
	if err != nil {
		return nil, err
	}
	c.lease, c.backend = l, l.U.ID
	return l, nil
}

func (c *call) retryNote(l *upstream.Lease, kind string) {
	c.h.m.upstreamErr.WithLabelValues(l.U.ID, kind).Inc()
}

// dispatchUnary sends a non-streamed request, failing over to another backend on
// connection errors, timeouts and 502/503/504 (the client has seen nothing yet).
func (c *call) dispatchUnary(ctx *fasthttp.RequestCtx) error {
	h := c.h
	deadline := c.start.Add(h.o.RequestTimeout)
	req := fasthttp.AcquireRequest()
	resp := fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	var tried []*upstream.Upstream
	var lastErr error
	for {
		l, err := c.acquire(context.Background(), tried)
		if err != nil {
			if lastErr != nil {
				return lastErr
			}
			return err
		}
		req.Reset()
		req.Header.SetMethod(fasthttp.MethodPost)
		uri := append(c.body.B[len(c.body.B):], l.U.Base...) // scratch space after the body
		uri = append(uri, c.path()...)
		req.SetRequestURIBytes(uri)
		c.setHeaders(&req.Header)
		req.SetBodyRaw(c.body.B)
		err = l.U.Client.DoDeadline(req, resp, deadline)
		status := resp.StatusCode()
		if err != nil || retryableStatus(status) {
			if err != nil {
				lastErr = classify(err, false)
				c.retryNote(l, kindOf(lastErr.(*apierr.Error)))
			} else {
				lastErr = &apierr.Error{Kind: statusKind(status), Message: "the backend failed (status " + itoa(status) + ")"}
				c.retryNote(l, "status")
			}
			l.Release(upstream.Failure)
			c.lease = nil
			if c.attempts >= h.o.MaxAttempts || !time.Now().Before(deadline) {
				return lastErr
			}
			tried = append(tried, l.U)
			h.m.retries.WithLabelValues(c.label).Inc()
			continue
		}
		outcome := upstream.Success
		if status >= 500 {
			outcome = upstream.Failure
			c.retryNote(l, "status")
		}
		l.Release(outcome)
		c.lease = nil
		c.status = status
		ctx.SetStatusCode(status)
		if ct := resp.Header.ContentType(); len(ct) > 0 {
			ctx.Response.Header.SetContentTypeBytes(ct)
		}
		body := resp.Body()
		ctx.SetBody(body)
		if status == 200 {
			c.use = parseUsage(member(body, "usage"))
			if !c.use.ok {
				c.estimated = true
				c.use.prompt = c.promptEstimate()
				if c.ep != epEmbeddings {
					c.use.completion = int64(len(member(body, "choices"))+3) / 4
				}
			}
		} else {
			c.errType = "upstream_" + itoa(status)
		}
		return nil
	}
}

func kindOf(e *apierr.Error) string {
	if e.Kind == apierr.UpstreamTimeout {
		return "timeout"
	}
	return "connect"
}

func statusKind(s int) apierr.Kind {
	switch s {
	case 503:
		return apierr.Unavailable
	case 504:
		return apierr.UpstreamTimeout
	}
	return apierr.BadGateway
}

func itoa(n int) string {
	var b [20]byte
	i := len(b)
	if n == 0 {
		return "0"
	}
	neg := n < 0
	if neg {
		n = -n
	}
	for n > 0 {
		i--
		b[i] = byte('0' + n%10)
		n /= 10
	}
	if neg {
		i--
		b[i] = '-'
	}
	return string(b[i:])
}

func (c *call) setHeaders(hd *fasthttp.RequestHeader) {
	hd.SetContentType("application/json")
	hd.Set("X-Request-Id", c.reqID)
	for _, kv := range c.forward {
		hd.SetBytesKV(kv[0], kv[1])
	}
}

// --- streaming ---

type streamState struct {
	c        *call
	l        *upstream.Lease
	resp     *fasthttp.Response
	body     io.Reader // the response body stream
	rd       *sse.Reader
	timer    *time.Timer // first-byte, then idle-between-events timeout
	stopBase func() bool // unregisters the close on end of the request context
	closeMu  sync.Mutex  // guards ready, closed and resp against the timeout callbacks
	ready    bool        // the backend's headers arrived: the body stream may be closed
	closed   bool        // closing was asked for
	timedOut atomic.Bool
	// Between events the timer is not reset per event: it fires after the idle timeout
	// and re-arms itself for the rest when an event came meanwhile.
	idle      atomic.Bool  // the timer bounds the gap between events (not the first byte)
	epoch     time.Time    // start of the idle phase
	lastEvent atomic.Int64 // time of the last event, since epoch
	aborted   atomic.Bool  // closed by timeout, shutdown or request deadline
	first     []byte       // data of the first event (copied)
	firstRaw  []byte

	// Used only by the goroutine writing the response.
	cancelBase func()
	out        []byte // bytes for the client
	outPos     int    // sent part of out (Read)
	outcome    upstream.Outcome
	mm         *modelMetrics
	started    bool // the idle timeout runs
	next       bool // the first event was emitted: read the next one
	done       bool // [DONE] seen
	last       bool // the stream is over
	finished   bool // end ran
}

var readerPool = sync.Pool{New: func() any { return sse.NewReader(nil, 4<<20) }}

// closeStream ends the backend response; a read in flight returns at once (the
// connection is closed, which also tells the backend to stop generating).
// Before the headers arrived the request cannot be interrupted (the connection's sliding
// read deadline bounds that wait); the close then happens as soon as they arrive.
func (st *streamState) closeStream() {
	st.closeMu.Lock()
	defer st.closeMu.Unlock()
	if st.closed {
		return
	}
	st.closed = true
	if st.ready {
		_ = st.resp.CloseBodyStream()
	}
}

// timeout is the timer's callback: first-byte timeout, or idle timeout between events.
func (st *streamState) timeout() {
	if st.idle.Load() {
		idle := st.c.h.o.StreamIdleTimeout
		if rest := idle - (time.Since(st.epoch) - time.Duration(st.lastEvent.Load())); rest > 0 {
			st.closeMu.Lock()
			if !st.closed {
				st.timer.Reset(rest)
			}
			st.closeMu.Unlock()
			return
		}
	}
	st.timedOut.Store(true)
	st.aborted.Store(true)
	st.closeStream()
}

// headersIn marks the body stream closable, closing it at once if that was asked for.
func (st *streamState) headersIn() {
	st.closeMu.Lock()
	defer st.closeMu.Unlock()
	st.ready = true
	if st.closed {
		_ = st.resp.CloseBodyStream()
	}
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
	fasthttp.ReleaseResponse(resp)
}

// dispatchStream opens the stream on a backend and reads its first event before anything
// is sent to the client, so that failures up to then fail over to another backend.
func (c *call) dispatchStream(ctx *fasthttp.RequestCtx) error {
	h := c.h
	base, cancelBase := context.WithTimeout(h.o.BaseContext, h.o.RequestTimeout)
	var tried []*upstream.Upstream
	var lastErr error
	for {
		l, err := c.acquire(base, tried)
		if err != nil {
			cancelBase()
			if lastErr != nil {
				return lastErr
			}
			return err
		}
		st := &streamState{c: c, l: l, resp: fasthttp.AcquireResponse()}
		st.resp.StreamBody = true
		st.timer = time.AfterFunc(h.o.FirstByteTimeout, st.timeout)
		st.stopBase = context.AfterFunc(base, func() { st.aborted.Store(true); st.closeStream() })
		e, retry := st.open()
		if e == nil {
			// Committed: from here on the client receives bytes.
			ctx.SetStatusCode(200)
			ctx.Response.Header.SetContentType("text/event-stream")
			ctx.Response.Header.Set("Cache-Control", "no-cache")
			ctx.Response.Header.Set("X-Accel-Buffering", "no")
			_ = ctx.SetWriteDeadline(c.start.Add(h.o.RequestTimeout))
			h.m.streams.Inc()
			st.cancelBase = cancelBase
			ctx.Response.SetBodyStream(st, -1)
			return nil
		}
		st.release()
		if !retry {
			cancelBase()
			return e
		}
		lastErr = e
		l.Release(upstream.Failure)
		c.lease = nil
		if c.attempts >= h.o.MaxAttempts || base.Err() != nil {
			cancelBase()
			return lastErr
		}
		tried = append(tried, l.U)
		h.m.retries.WithLabelValues(c.label).Inc()
	}
}

// open sends the request and reads the first event. On error it reports whether another
// backend may be tried; a non-retryable backend answer is relayed as an error.
func (st *streamState) open() (error, bool) {
	c, l := st.c, st.l
	req := fasthttp.AcquireRequest()
	req.Header.SetMethod(fasthttp.MethodPost)
	uri := append(c.body.B[len(c.body.B):], l.U.Base...) // scratch space after the body
	uri = append(uri, c.path()...)
	req.SetRequestURIBytes(uri)
	c.setHeaders(&req.Header)
	req.Header.Set("Accept", "text/event-stream")
	req.SetBodyRaw(c.body.B)
	err := l.U.Stream.Do(req, st.resp)
	fasthttp.ReleaseRequest(req)
	if err == nil {
		st.body = st.resp.BodyStream()
		st.headersIn()
	}
	if err != nil {
		if c.h.o.BaseContext.Err() != nil {
			return &apierr.Error{Kind: apierr.Unavailable, Message: "the gateway is shutting down", Err: err}, false
		}
		e := classify(err, st.timedOut.Load())
		c.retryNote(l, kindOf(e))
		return e, true
	}
	if st.body == nil { // a body fasthttp read whole (e.g. empty)
		st.body = bytes.NewReader(st.resp.Body())
	}
	if status := st.resp.StatusCode(); status != 200 {
		raw, _ := io.ReadAll(io.LimitReader(st.body, 1<<20))
		if retryableStatus(status) {
			c.retryNote(l, "status")
			return &apierr.Error{Kind: statusKind(status), Message: "the backend failed (status " + itoa(status) + ")"}, true
		}
		// The backend refused the request (e.g. 400): relay its OpenAI error message.
		var env struct {
			Error struct {
				Message string `json:"message"`
			} `json:"error"`
		}
		_ = json.Unmarshal(raw, &env)
		msg := env.Error.Message
		if msg == "" {
			msg = "the backend refused the request (status " + itoa(status) + ")"
		}
		kind := apierr.InvalidRequest
		switch {
		case status == 404:
			kind = apierr.NotFound
		case status == 413:
			kind = apierr.TooLarge
		case status == 422:
			kind = apierr.Unprocessable
		case status >= 500:
			kind = apierr.BadGateway
			c.retryNote(l, "status")
		}
		outcome := upstream.Success
		if status >= 500 {
			outcome = upstream.Failure
		}
		l.Release(outcome)
		c.lease = nil
		return &apierr.Error{Kind: kind, Message: msg}, false
	}
	st.rd = readerPool.Get().(*sse.Reader)
	st.rd.Reset(st.body)
	raw, data, err := st.rd.Next()
	if err != nil {
		e := classify(err, st.timedOut.Load())
		c.retryNote(l, kindOf(e))
		return e, true
	}
	st.firstRaw = append([]byte(nil), raw...)
	if data != nil {
		st.first = append([]byte(nil), data...)
	}
	return nil, false
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
func (st *streamState) WriteTo(w io.Writer) (int64, error) {
	st.begin()
	var n int64
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
func (st *streamState) Read(p []byte) (int, error) {
	st.begin()
	for st.outPos >= len(st.out) {
		if st.last {
			return 0, io.EOF
		}
		st.last = st.produce()
		st.outPos = 0
	}
	n := copy(p, st.out[st.outPos:])
	st.outPos += n
	return n, nil
}

// CloseWithError is called by fasthttp once the response is written (err nil) or failed,
// and also when the response is dropped unwritten: it finishes the call if WriteTo did not.
func (st *streamState) CloseWithError(err error) error {
	if !st.last {
		st.clientGone()
	}
	st.end()
	return nil
}

// begin starts the idle timeout between events (once).
func (st *streamState) begin() {
	if !st.started {
		st.started = true
		st.mm = st.c.h.m.model(st.c.label)
		st.epoch = time.Now()
		st.idle.Store(true)
		st.timer.Reset(st.c.h.o.StreamIdleTimeout)
	}
}

// produce sets st.out to the client bytes of the next event, followed by every further
// event the reader already holds whole (a burst goes out in one write; nothing waits for
// bytes not yet received). last reports that the stream is over; st.out then ends with
// an error event if the backend failed.
func (st *streamState) produce() (last bool) {
	st.out = st.out[:0]
	if !st.next {
		st.next = true
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
		st.done = true
		st.out = append(st.out, "data: [DONE]\n\n"...)
	case st.event(data, st.mm):
		st.out = sse.AppendData(st.out, data)
	}
}

// ended handles the end of the backend stream (err from the reader) and reports true.
func (st *streamState) ended(err error) bool {
	c, h := st.c, st.c.h
	st.last = true
	if err == io.EOF && (st.done || c.use.ok) { // complete (without [DONE] but with usage: accepted)
		c.status = 200
		if !c.use.ok {
			c.partialUsage()
		}
		return true
	}
	// The backend failed after the first byte: end with an OpenAI error event.
	var e *apierr.Error
	switch {
	case st.timedOut.Load():
		e = &apierr.Error{Kind: apierr.UpstreamTimeout, Message: "the backend stopped sending events"}
		c.retryNote(c.lease, "timeout")
	case h.o.BaseContext.Err() != nil:
		e = &apierr.Error{Kind: apierr.Unavailable, Message: "the gateway is shutting down"}
	default:
		e = &apierr.Error{Kind: apierr.BadGateway, Message: "the backend stream broke off"}
		c.retryNote(c.lease, "stream")
	}
	st.outcome = upstream.Failure
	c.status, c.errType = e.Kind.Status(), e.Kind.Type()
	st.out = sse.AppendData(st.out, e.Envelope())
	c.partialUsage()
	return true
}

// end returns the stream's resources and finishes the call (once).
func (st *streamState) end() {
	if st.finished {
		return
	}
	st.finished, st.last = true, true
	c, h := st.c, st.c.h
	// The connection goes back before the slot, so that the connections in use never
	// outnumber the backend's in-flight slots.
	st.release()
	c.lease.Release(st.outcome)
	c.lease = nil
	st.cancelBase()
	h.m.streams.Dec()
	c.finish()
}

// event inspects one data event: usage, token timing. It returns false when the event
// must not reach the client (the usage chunk we asked for).
func (st *streamState) event(data []byte, mm *modelMetrics) bool {
	c := st.c
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
	if c.injected && emptyChoices && len(usageRaw) > 0 && usageRaw[0] == '{' {
		return false
	}
	return true
}

func (st *streamState) clientGone() {
	st.outcome = upstream.Neutral
	st.closeStream() // aborts the backend request now
	c := st.c
	c.status, c.errType = 499, "client_closed_request"
	c.partialUsage()
}

// partialUsage applies the billing policy for a stream that did not complete: the prompt
// plus the completion tokens produced until then (one per token event), marked estimated
// unless the backend's own usage arrived.
func (c *call) partialUsage() {
	if c.use.ok && c.status == 200 {
		return
	}
	if !c.use.ok {
		c.use.prompt = c.promptEstimate()
	}
	if c.use.completion < c.chunks {
		c.use.completion = c.chunks
	}
	c.use.ok = true
	c.estimated = true
}

// finish settles the quota, writes the usage record, metrics and the access log line,
// and returns the call to the pool.
func (c *call) finish() {
	h := c.h
	now := h.o.Now()
	dur := now.Sub(c.start)
	if c.lease != nil {
		c.lease.Release(upstream.Neutral)
		c.lease = nil
	}
	if c.status == 0 {
		c.status = 200
	}
	total := c.use.prompt + c.use.completion
	if c.ticket != nil {
		c.ticket.Settle(total)
	}
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
	if c.key != nil && h.o.Ledger != nil {
		h.o.Ledger.Add(ledger.Record{
			RequestID: c.reqID, CreatedAt: c.start, UserID: c.key.UserID, KeyID: c.key.ID,
			Model: c.reqModel, Backend: c.backend, Endpoint: c.path(), Status: c.status,
			PromptTokens: c.use.prompt, CompletionTokens: c.use.completion, Estimated: c.estimated,
			Streamed: c.stream, TTFT: c.ttft, Duration: dur, ErrorType: c.errType,
		})
	}
	if h.o.AccessLog {
		f := accessFields{requestID: c.reqID, endpoint: c.path(), model: label, backend: c.backend, status: c.status,
			duration: dur, stream: c.stream, prompt: c.use.prompt, completion: c.use.completion, attempts: c.attempts}
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
