package sim

import (
	"bufio"
	"encoding/json"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/maas-platform/maas/pkg/apierr"
	"github.com/maas-platform/maas/pkg/openai"
)

// vocab are the words answers are made of; each is one token.
var vocab = [32]string{
	"the", "simulated", "model", "answers", "with", "plain", "words", "so", "that", "every",
	"token", "counts", "once", "quick", "brown", "fox", "jumps", "over", "lazy", "dog",
	"engine", "stream", "gateway", "latency", "cache", "batch", "queue", "signal", "route",
	"vector", "sample", "output",
}

func word(seed uint64, k int) string { return vocab[(seed>>17+uint64(k))&31] }

var bufPool = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}

// choice is the plan of one generated choice.
type choice struct {
	index  int
	seed   uint64
	n      int    // completion tokens
	finish string // stop or length
	echo   string // completions with echo: the prompt, sent first
	prompt int    // tokens of the prompt it answers
	lead   bool   // its first token has a leading space (completions)
	// cut is where a stop sequence begins in the generated text (bytes; -1: none): the text
	// from there on is not returned.
	cut int
	off int // bytes of generated text produced so far (streaming)
}

// piece returns token k of c as it is sent: its word, and whether a space leads it, cut
// where a stop sequence begins. Tokens are produced in order.
func (g *gen) piece(c *choice, k int) (string, bool) {
	w, lead := word(c.seed, k), k > 0 || c.lead
	if c.cut < 0 {
		return w, lead
	}
	avail := c.cut - c.off
	c.off += len(w)
	if lead {
		c.off++
		avail--
	}
	switch {
	case avail < 0: // the stop sequence began before this token (at its space, or earlier)
		return "", false
	case avail < len(w):
		return w[:avail], lead
	}
	return w, lead
}

// gen is one generation request, planned before it is admitted.
type gen struct {
	s            *Sim
	m            *model
	chat         bool
	id           []byte
	created      int64
	prompt       int
	choices      []choice
	maxN         int
	stream       bool
	includeUsage bool
	// continuousUsage puts the usage so far in every chunk (vLLM's
	// stream_options.continuous_usage_stats, honoured with include_usage only, as vLLM does).
	continuousUsage bool
	start           time.Time
	prefix          []byte // chunk prefix up to and including `"choices":[`
	tokens          int64  // the engine capacity it holds (prompt and completion)

	// A stream's progress, and its state as a pulled body (Read, Close).
	st      streamState
	ended   bool
	timer   *time.Timer
	buf     *[]byte
	pending []byte
}

func (g *gen) completionTokens() int {
	n := 0
	for _, c := range g.choices {
		n += c.n
	}
	return n
}

func badJSON(err error) error {
	return apierr.New(apierr.InvalidRequest, "invalid JSON body: %v", err)
}

// lookup finds a served model of the right kind.
func (s *Sim) lookup(name string, embedding bool) (*model, error) {
	if name == "" {
		return nil, apierr.Param("model", "you must provide a model parameter")
	}
	m := s.models.Load().byName[name]
	if m == nil {
		return nil, &apierr.Error{Kind: apierr.NotFound, Param: "model", Code: "model_not_found",
			Message: "The model `" + name + "` does not exist."}
	}
	if m.embedding != embedding {
		what := "a chat/completions"
		if m.embedding {
			what = "an embedding"
		}
		return nil, apierr.Param("model", "the model `%s` is %s model and does not support this endpoint", name, what)
	}
	return m, nil
}

// plan decides the length and finish reason of count choices answering a prompt of prompt
// tokens; lead is true when the answer's first token has a leading space (completions).
func (s *Sim) plan(seed uint64, prompt, limit int, hasLimit, ignoreEOS bool, count int, stops []string, lead bool) ([]choice, error) {
	maxLen := s.o.MaxModelLen
	switch {
	case hasLimit && limit < 1:
		return nil, apierr.Param("max_tokens", "max_tokens must be at least 1, got %d", limit)
	case prompt >= maxLen:
		return nil, apierr.Param("messages", "This model's maximum context length is %d tokens. However, your prompt has %d tokens.", maxLen, prompt)
	case hasLimit && prompt+limit > maxLen:
		return nil, apierr.Param("max_tokens", "This model's maximum context length is %d tokens. However, you requested %d tokens (%d in the messages, %d in the completion).", maxLen, prompt+limit, prompt, limit)
	}
	room := maxLen - prompt
	out := make([]choice, count)
	for i := range out {
		cs := seed + uint64(i)*0x9e3779b97f4a7c15
		n, fin := s.o.OutputTokens.pick(cs>>7), finishStop
		switch {
		case hasLimit && (ignoreEOS || n >= limit):
			n, fin = limit, finishLength
		case n >= room:
			n, fin = room, finishLength
		}
		c := choice{index: i, seed: cs, n: n, finish: fin, prompt: prompt, lead: lead, cut: -1}
		if len(stops) > 0 {
			c.applyStops(stops)
		}
		out[i] = c
	}
	return out, nil
}

// applyStops ends the choice at the first token whose text completes one of stops, as vLLM
// does: after each token it looks for the stops, in the order given, in the text that
// token may have completed; the first found ends generation there (finish_reason "stop"),
// the text is cut where that stop begins, and the tokens generated up to it are counted.
func (c *choice) applyStops(stops []string) {
	var text strings.Builder
	for k := 0; k < c.n; k++ {
		prev := text.Len()
		if k > 0 || c.lead {
			text.WriteByte(' ')
		}
		text.WriteString(word(c.seed, k))
		t := text.String()
		for _, stop := range stops {
			from := max(0, prev-len(stop)+1)
			if i := strings.Index(t[from:], stop); i >= 0 {
				c.n, c.finish, c.cut = k+1, finishStop, from+i
				return
			}
		}
	}
}

// stopList validates a request's stop sequences (vLLM refuses an empty one).
func stopList(l *openai.StringList) ([]string, error) {
	if l == nil {
		return nil, nil
	}
	for _, s := range *l {
		if s == "" {
			return nil, apierr.Param("stop", "stop cannot contain an empty string")
		}
	}
	return *l, nil
}

// streamOptions is stream_options with vLLM's continuous_usage_stats.
type streamOptions struct {
	IncludeUsage         bool `json:"include_usage"`
	ContinuousUsageStats bool `json:"continuous_usage_stats"`
}

// usage returns include_usage and continuous usage for a request (vLLM's
// should_include_usage: continuous stats need include_usage).
func (o *streamOptions) usage(stream bool) (include, continuous bool) {
	if !stream || o == nil {
		return false, false
	}
	return o.IncludeUsage, o.IncludeUsage && o.ContinuousUsageStats
}

// The request bodies as the simulator reads them: OpenAI's, with vLLM's stream_options
// (the outer field shadows the embedded one).
type (
	chatRequest struct {
		openai.ChatCompletionRequest
		StreamOptions *streamOptions `json:"stream_options,omitempty"`
	}
	completionRequest struct {
		openai.CompletionRequest
		StreamOptions *streamOptions `json:"stream_options,omitempty"`
	}
)

func choiceCount(n *int) (int, error) {
	if n == nil {
		return 1, nil
	}
	if *n < 1 || *n > 128 {
		return 0, apierr.Param("n", "n must be between 1 and 128, got %d", *n)
	}
	return *n, nil
}

func (s *Sim) chat(ctx *fasthttp.RequestCtx) {
	start := time.Now()
	var req chatRequest
	if err := json.Unmarshal(ctx.PostBody(), &req); err != nil {
		apierr.WriteFast(ctx, badJSON(err))
		return
	}
	m, err := s.lookup(req.Model, false)
	if err != nil {
		apierr.WriteFast(ctx, err)
		return
	}
	if len(req.Messages) == 0 {
		apierr.WriteFast(ctx, apierr.Param("messages", "messages must not be empty"))
		return
	}
	prompt := 2
	seed := uint64(14695981039346656037)
	for i := range req.Messages {
		msg := &req.Messages[i]
		text := msg.Content.String()
		prompt += 4 + Tokens(text) + Tokens(msg.Name)
		seed ^= promptSeed(msg.Role, text)
		seed *= 1099511628211
	}
	count, err := choiceCount(req.N)
	if err != nil {
		apierr.WriteFast(ctx, err)
		return
	}
	stops, err := stopList(req.Stop)
	if err != nil {
		apierr.WriteFast(ctx, err)
		return
	}
	limit, hasLimit := req.Limit()
	choices, err := s.plan(seed, prompt, limit, hasLimit, req.IgnoreEOS, count, stops, false)
	if err != nil {
		apierr.WriteFast(ctx, err)
		return
	}
	g := &gen{s: s, m: m, chat: true, prompt: prompt, choices: choices, stream: req.Stream, start: start}
	g.includeUsage, g.continuousUsage = req.StreamOptions.usage(req.Stream)
	s.respond(ctx, g)
}

func (s *Sim) completions(ctx *fasthttp.RequestCtx) {
	start := time.Now()
	var req completionRequest
	if err := json.Unmarshal(ctx.PostBody(), &req); err != nil {
		apierr.WriteFast(ctx, badJSON(err))
		return
	}
	m, err := s.lookup(req.Model, false)
	if err != nil {
		apierr.WriteFast(ctx, err)
		return
	}
	if req.Prompt.Len() == 0 {
		apierr.WriteFast(ctx, apierr.Param("prompt", "prompt must not be empty"))
		return
	}
	count, err := choiceCount(req.N)
	if err != nil {
		apierr.WriteFast(ctx, err)
		return
	}
	limit, hasLimit := 0, false
	if req.MaxTokens != nil {
		limit, hasLimit = *req.MaxTokens, true
	}
	stops, err := stopList(req.Stop)
	if err != nil {
		apierr.WriteFast(ctx, err)
		return
	}
	g := &gen{s: s, m: m, prompt: 0, stream: req.Stream, start: start}
	g.includeUsage, g.continuousUsage = req.StreamOptions.usage(req.Stream)
	for p := 0; p < req.Prompt.Len(); p++ {
		var tokens int
		var seed uint64
		var echo string
		if req.Prompt.Tokens != nil {
			tokens = len(req.Prompt.Tokens[p])
			seed = uint64(tokens) * 0x9e3779b97f4a7c15
			for _, t := range req.Prompt.Tokens[p] {
				seed = (seed ^ uint64(t)) * 1099511628211
			}
		} else {
			text := req.Prompt.Strings[p]
			tokens, seed = Tokens(text), promptSeed(text)
			if req.Echo {
				echo = text
			}
		}
		cs, err := s.plan(seed, tokens, limit, hasLimit, req.IgnoreEOS, count, stops, true)
		if err != nil {
			apierr.WriteFast(ctx, err)
			return
		}
		for i := range cs {
			cs[i].index = p*count + i
			cs[i].echo = echo
		}
		g.prompt += tokens
		g.choices = append(g.choices, cs...)
	}
	s.respond(ctx, g)
}

// respond injects the request's failure, admits it and answers, streaming or not.
func (s *Sim) respond(ctx *fasthttp.RequestCtx, g *gen) {
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	f, answered := s.injectLeading(ctx, &timer)
	if answered {
		return
	}
	g.tokens = int64(g.prompt + g.completionTokens())
	if !s.admitOrRefuse(ctx, g.tokens) {
		return
	}
	queued := time.Since(g.start)
	g.id = s.nextID(make([]byte, 0, 48), idPrefixFor(g.chat))
	g.created = time.Now().Unix()
	for _, c := range g.choices {
		g.maxN = max(g.maxN, c.n)
	}
	if g.stream {
		g.prefix = g.chunkPrefix()
		g.st.malformed = f.Malformed
		if f.Drop {
			s.hijack(ctx, func(c net.Conn) {
				bw := bufio.NewWriter(c)
				if _, err := bw.WriteString(rawStreamHeader); err != nil || bw.Flush() != nil {
					g.finish(false)
					return
				}
				// The events before the drop point, then the server closes the connection.
				g.push(&eventWriter{w: bw, chunked: true, dropAfter: f.DropAfter})
				_ = bw.Flush()
			}, false)
			return
		}
		ctx.Response.Header.SetContentType("text/event-stream")
		ctx.Response.Header.Set("Cache-Control", "no-cache")
		if s.o.TTFT == 0 && s.o.ITL == 0 && s.o.ITLJitter == 0 && !s.o.FlushEveryToken {
			// Nothing to wait for: the whole stream is written at once, as one body.
			bp := bufPool.Get().(*[]byte)
			bb := &bodyBuf{b: (*bp)[:0]}
			g.push(&eventWriter{w: bb, dropAfter: -1})
			ctx.SetBody(bb.b)
			*bp = bb.b
			bufPool.Put(bp)
			return
		}
		// Pulled event by event on the connection's goroutine, each event written and
		// flushed as one chunk.
		ctx.Response.ImmediateHeaderFlush = s.o.TTFT > 0 // headers now, the first token after TTFT
		g.buf = bufPool.Get().(*[]byte)
		ctx.Response.SetBodyStream(g, -1)
		return
	}

	wait := s.o.TTFT
	if s.o.ITL > 0 || s.o.ITLJitter > 0 {
		for k := 1; k < g.maxN; k++ {
			wait += s.itl()
		}
	}
	var gone <-chan struct{}
	stopWatch := func() {}
	if wait > 0 {
		gone, stopWatch = watchClient(ctx)
	}
	ok, left := s.sleepUnlessGone(&timer, wait, gone)
	stopWatch()
	s.release(g.tokens)
	if !ok {
		// The client went away (the request is aborted, as vLLM aborts it), or the
		// simulator stops: what it consumed until then is counted.
		g.countConsumed(g.producedIn(time.Since(g.start) - queued))
		if left {
			ctx.SetConnectionClose()
			apierr.WriteFast(ctx, apierr.New(apierr.ClientClosed, "client closed the connection"))
		} else {
			apierr.WriteFast(ctx, apierr.New(apierr.Unavailable, "simulator is stopping"))
		}
		return
	}
	bp := bufPool.Get().(*[]byte)
	body := g.appendBody((*bp)[:0])
	g.countConsumed(g.completionTokens())
	g.recordDone(queued + s.o.TTFT)
	switch {
	case f.Drop:
		writeDropped(s, ctx, body, f.DropAfter)
	case f.Malformed:
		ctx.Response.Header.SetContentType("application/json")
		ctx.SetBody(body[:len(body)/2])
	default:
		ctx.Response.Header.SetContentType("application/json")
		ctx.SetBody(body)
	}
	*bp = body
	bufPool.Put(bp)
}

// countConsumed adds a non-streamed request's tokens to the counters, as vLLM's engine
// counts them: the prompt once its first token is out (the end of prefill), the tokens
// produced.
func (g *gen) countConsumed(produced int) {
	if produced > 0 {
		g.m.mm.promptTokens.Add(float64(g.prompt))
		g.m.mm.genTokens.Add(float64(produced))
	}
}

// producedIn is how many tokens a non-streamed request has produced after running d: none
// before the first token, then one per inter-token gap for each choice.
func (g *gen) producedIn(d time.Duration) int {
	o := &g.s.o
	if d < o.TTFT {
		return 0
	}
	n := 0
	for _, c := range g.choices {
		k := c.n
		if o.ITL > 0 {
			k = min(c.n, 1+int((d-o.TTFT)/o.ITL))
		}
		n += k
	}
	return n
}

// writeDropped sends the headers and the first n bytes of body on the raw connection,
// then closes it.
func writeDropped(s *Sim, ctx *fasthttp.RequestCtx, body []byte, n int) {
	raw := make([]byte, 0, len(body)+128)
	raw = append(raw, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "...)
	raw = strconv.AppendInt(raw, int64(len(body)), 10)
	raw = append(raw, "\r\n\r\n"...)
	raw = append(raw, body[:min(n, len(body))]...)
	s.hijack(ctx, func(c net.Conn) { _, _ = c.Write(raw) }, false)
}

const rawStreamHeader = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n"

func idPrefixFor(chat bool) string {
	if chat {
		return "chatcmpl-"
	}
	return "cmpl-"
}

// recordDone adds a request that ran to its end to the vLLM metrics (its tokens are
// counted as they are admitted and produced).
func (g *gen) recordDone(ttft time.Duration) {
	mm := g.m.mm
	for _, c := range g.choices {
		if c.finish == finishLength {
			mm.length.Inc()
		} else {
			mm.stop.Inc()
		}
	}
	mm.ttft.Observe(ttft.Seconds())
	mm.e2e.Observe(time.Since(g.start).Seconds())
}

func writeInjectedStatus(ctx *fasthttp.RequestCtx, status int) {
	typ := "invalid_request_error"
	switch {
	case status == 429:
		typ = "rate_limit_error"
	case status == 503:
		typ = "service_unavailable"
	case status >= 500:
		typ = "api_error"
	}
	if status == 429 || status == 503 {
		ctx.Response.Header.Set("Retry-After", "1")
	}
	ctx.Response.Header.SetContentType("application/json")
	ctx.SetStatusCode(status)
	b := append([]byte(nil), `{"error":{"message":"simulated failure (status `...)
	b = strconv.AppendInt(b, int64(status), 10)
	b = append(b, `)","type":"`...)
	b = append(b, typ...)
	b = append(b, `","param":null,"code":"simulated_failure"}}`...)
	ctx.SetBody(b)
}

// appendBody appends the non-streamed answer.
func (g *gen) appendBody(b []byte) []byte {
	b = append(b, `{"id":"`...)
	b = append(b, g.id...)
	if g.chat {
		b = append(b, `","object":"chat.completion","created":`...)
	} else {
		b = append(b, `","object":"text_completion","created":`...)
	}
	b = strconv.AppendInt(b, g.created, 10)
	b = append(b, `,"model":`...)
	b = append(b, g.m.quoted...)
	b = append(b, `,"choices":[`...)
	for i, c := range g.choices {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"index":`...)
		b = strconv.AppendInt(b, int64(c.index), 10)
		if g.chat {
			b = append(b, `,"message":{"role":"assistant","content":"`...)
		} else {
			b = append(b, `,"text":"`...)
			b = appendJSONEscaped(b, c.echo)
		}
		for k := 0; k < c.n; k++ {
			w, lead := g.piece(&g.choices[i], k)
			if lead {
				b = append(b, ' ')
			}
			b = append(b, w...)
		}
		if g.chat {
			b = append(b, `"},"logprobs":null,"finish_reason":"`...)
		} else {
			b = append(b, `","logprobs":null,"finish_reason":"`...)
		}
		b = append(b, c.finish...)
		b = append(b, `"}`...)
	}
	b = append(b, `],"system_fingerprint":`...)
	if g.s.fingerprint != nil {
		b = append(b, g.s.fingerprint...)
	} else {
		b = append(b, "null"...) // vLLM's default: the field, null
	}
	b = append(b, `,"usage":`...)
	b = appendUsage(b, g.prompt, g.completionTokens())
	return append(b, '}')
}
