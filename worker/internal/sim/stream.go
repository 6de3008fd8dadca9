package sim

import (
	"errors"
	"io"
	"strconv"
	"time"
)

// A stream is produced one SSE event at a time by gen.next, a state machine, and consumed
// either pushed (gen.push: the whole stream into one buffer, or onto a hijacked connection)
// or pulled (gen as the response's body stream: fasthttp reads one event per Read on the
// connection's own goroutine and writes and flushes it as one chunk, so every event is its
// own write, without a pipe or a goroutine per stream).

// phase is where a stream is.
type phase uint8

const (
	phaseHead   phase = iota // per choice: the role chunk (chat), the echo chunk (completions)
	phaseTokens              // token rounds: a chunk per unfinished choice (its last: finish_reason)
	phaseUsage               // the usage chunk when asked for
	phaseDone                // data: [DONE]
	phaseOver
)

// wait is what a stream waits before sending an event.
type wait uint8

const (
	waitNone wait = iota
	waitTTFT      // before the first event
	waitITL       // before the first event of a new token round
)

// streamState is a stream's progress: which event next produces.
type streamState struct {
	phase     phase
	ci, sub   int // choice, and step within it (head)
	k         int // token round
	gap       bool
	malformed bool // one bad event is due after the first
	events    int  // events produced
	produced  int  // completion tokens produced, all choices
	counted   int  // of produced, added to vllm:generation_tokens_total
	ttft      time.Duration
}

func (g *gen) chunkPrefix() []byte {
	b := make([]byte, 0, 128)
	b = append(b, `{"id":"`...)
	b = append(b, g.id...)
	if g.chat {
		b = append(b, `","object":"chat.completion.chunk","created":`...)
	} else {
		b = append(b, `","object":"text_completion","created":`...)
	}
	b = strconv.AppendInt(b, g.created, 10)
	b = append(b, `,"model":`...)
	b = append(b, g.m.quoted...)
	return append(b, `,"choices":[`...)
}

type chunkKind uint8

const (
	chunkRole chunkKind = iota // chat's first chunk of a choice
	chunkText                  // text (a token, or the echoed prompt)
)

// event appends one framed event ("data: {...}\n\n"): the prefix, one choice, the closing.
// finish is the choice's finish_reason on its last token's chunk, "" (null) before it;
// completion is the choice's tokens so far, for continuous usage stats.
func (g *gen) event(b []byte, c *choice, kind chunkKind, text string, lead bool, finish string, completion int) []byte {
	b = append(b, "data: "...)
	b = append(b, g.prefix...)
	b = append(b, `{"index":`...)
	b = strconv.AppendInt(b, int64(c.index), 10)
	switch {
	case g.chat && kind == chunkRole:
		b = append(b, `,"delta":{"role":"assistant","content":""}`...)
	case g.chat:
		b = append(b, `,"delta":{"content":"`...)
		if lead {
			b = append(b, ' ')
		}
		b = appendJSONEscaped(b, text)
		b = append(b, `"}`...)
	default:
		b = append(b, `,"text":"`...)
		if lead {
			b = append(b, ' ')
		}
		b = appendJSONEscaped(b, text)
		b = append(b, '"')
	}
	b = append(b, `,"logprobs":null,"finish_reason":`...)
	if finish != "" {
		b = append(b, '"')
		b = append(b, finish...)
		b = append(b, '"')
	} else {
		b = append(b, "null"...)
	}
	b = append(b, '}', ']')
	switch {
	case g.continuousUsage:
		b = append(b, `,"usage":`...)
		b = appendUsage(b, c.prompt, completion)
	case g.includeUsage:
		b = append(b, `,"usage":null`...)
	case finish != "" && g.s.fingerprint != nil:
		// vLLM with a fingerprint stamps it on the finishing chunks when no usage chunk follows.
		b = append(b, `,"system_fingerprint":`...)
		b = append(b, g.s.fingerprint...)
	}
	return append(b, "}\n\n"...)
}

// usageEvent appends the final usage chunk: empty choices, the whole request's usage.
func (g *gen) usageEvent(b []byte) []byte {
	b = append(b, "data: "...)
	b = append(b, g.prefix...)
	b = append(b, `],"usage":`...)
	b = appendUsage(b, g.prompt, g.completionTokens())
	if g.s.fingerprint != nil {
		b = append(b, `,"system_fingerprint":`...)
		b = append(b, g.s.fingerprint...)
	}
	return append(b, "}\n\n"...)
}

const doneEvent = "data: [DONE]\n\n"

// next appends the stream's next framed event to b and says what to wait before sending it;
// ok is false once [DONE] has been produced.
func (g *gen) next(b []byte) (_ []byte, w wait, ok bool) {
	st := &g.st
	if st.malformed && st.events == 1 {
		st.malformed = false
		st.events++
		b = append(b, "data: "...)
		b = append(b, g.prefix...)
		b = append(b, `{"index":0,"delta":{"content":`...)
		return append(b, "\n\n"...), waitNone, true
	}
	b, gap, ok := g.produce(b)
	if !ok {
		return b, waitNone, false
	}
	switch {
	case st.events == 0:
		w = waitTTFT
	case gap:
		w = waitITL
	}
	st.events++
	return b, w, true
}

// produce is next's state machine; gap is true for the first event of a token round after
// the first.
func (g *gen) produce(b []byte) (_ []byte, gap, ok bool) {
	st := &g.st
	for {
		switch st.phase {
		case phaseHead:
			if st.ci == len(g.choices) {
				st.phase, st.ci, st.sub = phaseTokens, 0, 0
				continue
			}
			c := &g.choices[st.ci]
			st.sub++
			switch {
			case st.sub == 1 && g.chat:
				return g.event(b, c, chunkRole, "", false, "", 0), false, true
			case st.sub == 2 && c.echo != "":
				return g.event(b, c, chunkText, c.echo, false, "", 0), false, true
			case st.sub >= 2:
				st.ci, st.sub = st.ci+1, 0
			}
		case phaseTokens:
			if st.ci == len(g.choices) {
				st.ci, st.k, st.gap = 0, st.k+1, true
			}
			if st.k >= g.maxN {
				st.phase = phaseUsage
				continue
			}
			c := &g.choices[st.ci]
			st.ci++
			if st.k >= c.n {
				continue
			}
			gap, st.gap = st.gap, false
			st.produced++
			text, lead := g.piece(c, st.k)
			finish := ""
			if st.k == c.n-1 {
				finish = c.finish // on the last token's chunk, as vLLM sends it
			}
			return g.event(b, c, chunkText, text, lead, finish, st.k+1), gap, true
		case phaseUsage:
			st.phase = phaseDone
			if g.includeUsage {
				return g.usageEvent(b), false, true
			}
		case phaseDone:
			st.phase = phaseOver
			return append(b, doneEvent...), false, true
		default:
			return b, false, false
		}
	}
}

// await waits what w says; flush (may be nil) is flushed before an inter-token wait so that
// the client has the tokens produced so far. false when the simulator stops meanwhile.
func (g *gen) await(timer **time.Timer, w wait, flush flushWriter) bool {
	s := g.s
	switch w {
	case waitTTFT:
		if !s.sleep(timer, s.o.TTFT) {
			return false
		}
		g.st.ttft = time.Since(g.start)
		// The first token is out: vLLM counts the prompt's tokens now (end of prefill).
		g.m.mm.promptTokens.Add(float64(g.prompt))
		return true
	case waitITL:
		d := s.itl()
		if d <= 0 {
			return true
		}
		g.countTokens() // the tokens so far are on the engine's counter while it waits
		if flush != nil && flush.Flush() != nil {
			return false
		}
		return s.sleep(timer, d)
	}
	return true
}

// countTokens adds the tokens produced since the last call to vllm:generation_tokens_total.
func (g *gen) countTokens() {
	if n := g.st.produced - g.st.counted; n > 0 {
		g.m.mm.genTokens.Add(float64(n))
		g.st.counted = g.st.produced
	}
}

// finish ends a stream once: the generated tokens are counted whether or not the client
// stayed (as vLLM's counters do), the request's outcome only when it reached [DONE]; its
// engine capacity is released.
func (g *gen) finish(complete bool) {
	if g.ended {
		return
	}
	g.ended = true
	g.countTokens()
	if complete {
		g.recordDone(g.st.ttft)
	}
	g.s.release(g.tokens)
}

// push writes the whole stream to ew, waiting as it goes, and ends it.
func (g *gen) push(ew *eventWriter) {
	var timer *time.Timer
	bp := bufPool.Get().(*[]byte)
	b := (*bp)[:0]
	defer func() {
		if timer != nil {
			timer.Stop()
		}
		*bp = b
		bufPool.Put(bp)
	}()
	complete := false
	defer func() { g.finish(complete) }()
	for {
		var w wait
		var ok bool
		if b, w, ok = g.next(b[:0]); !ok {
			break
		}
		if !g.await(&timer, w, ew.w) || ew.event(b) != nil {
			return
		}
	}
	complete = ew.end() == nil
}

// Read is the pulled stream: one event per call (or the rest of one that did not fit in p).
// The simulator stopping ends the body early (no [DONE]), as a dying engine's would.
func (g *gen) Read(p []byte) (int, error) {
	if len(g.pending) == 0 {
		if g.ended {
			return 0, io.EOF
		}
		b, w, ok := g.next((*g.buf)[:0])
		*g.buf = b
		if !ok {
			g.finish(true)
			return 0, io.EOF
		}
		if !g.await(&g.timer, w, nil) {
			g.finish(false)
			return 0, io.EOF
		}
		g.pending = b
	}
	n := copy(p, g.pending)
	g.pending = g.pending[n:]
	return n, nil
}

// Close is called by fasthttp when the body has been written or the write failed (the
// client is gone): an unfinished stream ends as abandoned.
func (g *gen) Close() error {
	g.finish(false)
	if g.timer != nil {
		g.timer.Stop()
	}
	if g.buf != nil {
		bufPool.Put(g.buf)
		g.buf, g.pending = nil, nil
	}
	return nil
}

var errDropped = errors.New("sim: connection dropped on purpose")

// flushWriter is a *bufio.Writer, or a bodyBuf when the whole stream is built at once.
type flushWriter interface {
	Write(p []byte) (int, error)
	WriteString(s string) (int, error)
	Flush() error
}

// bodyBuf collects a whole stream in memory.
type bodyBuf struct{ b []byte }

func (w *bodyBuf) Write(p []byte) (int, error)       { w.b = append(w.b, p...); return len(p), nil }
func (w *bodyBuf) WriteString(s string) (int, error) { w.b = append(w.b, s...); return len(s), nil }
func (w *bodyBuf) Flush() error                      { return nil }

// eventWriter writes framed SSE events, optionally in HTTP chunked framing (on a hijacked
// connection), and stops after dropAfter events when dropAfter >= 0.
type eventWriter struct {
	w         flushWriter
	chunked   bool
	dropAfter int
	events    int
	buf       []byte
}

func (e *eventWriter) event(ev []byte) error {
	if e.dropAfter >= 0 && e.events >= e.dropAfter {
		return errDropped
	}
	e.events++
	if !e.chunked {
		_, err := e.w.Write(ev)
		return err
	}
	e.buf = strconv.AppendInt(e.buf[:0], int64(len(ev)), 16)
	e.buf = append(e.buf, '\r', '\n')
	e.buf = append(e.buf, ev...)
	e.buf = append(e.buf, '\r', '\n')
	_, err := e.w.Write(e.buf)
	return err
}

// end closes the body (the last chunk in chunked framing) and flushes.
func (e *eventWriter) end() error {
	if e.chunked {
		if _, err := e.w.WriteString("0\r\n\r\n"); err != nil {
			return err
		}
	}
	return e.w.Flush()
}
