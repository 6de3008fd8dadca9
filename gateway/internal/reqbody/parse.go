package reqbody

import (
	"bytes"
	"encoding/json"
	"math"
	"strconv"

	"github.com/maas-platform/maas/pkg/apierr"
)

// Endpoint is the API a body is sent to; it decides which fields are read.
type Endpoint uint8

const (
	Chat        Endpoint = iota // /v1/chat/completions: messages, n
	Completions                 // /v1/completions: prompt, n
	Embeddings                  // /v1/embeddings: input; never streamed
)

// PrefixBytes is the most of the prompt field kept in Fields.Prefix.
const PrefixBytes = 512

// Limits bound what one request may ask for. A limit ≤ 0 is no limit.
type Limits struct {
	// MaxN is the most choices (n) a chat or completions request may ask for.
	MaxN int64
	// MaxMessages is the most elements of a chat request's messages.
	MaxMessages int
	// MaxInputs is the most elements of an embeddings request's input array, and the most
	// prompts of a completions batch.
	MaxInputs int
}

// DefaultLimits returns the limits the gateway uses unless configured otherwise.
func DefaultLimits() Limits {
	return Limits{MaxN: 16, MaxMessages: 2048, MaxInputs: 2048}
}

// Fields is what the gateway reads of a request body. Its slices point into the body that
// was parsed (Model only when written without escapes): copy what must outlive the body.
type Fields struct {
	// Model is the decoded model name: non-empty UTF-8 without NUL.
	Model []byte
	// Stream is stream:true on chat or completions (embeddings never stream).
	Stream bool
	// IncludeUsage is stream_options.include_usage:true.
	IncludeUsage bool
	// MaxTokens and MaxCompletionTokens are the limits given, or -1 when absent or null.
	MaxTokens, MaxCompletionTokens int64
	// N is the number of choices asked for: 1 when absent or null (always 1 on embeddings).
	N int64
	// Messages is the number of elements of messages (chat), when it is an array.
	Messages int
	// Inputs is the number of elements of input (embeddings) when it is an array, 1 when it
	// is anything else but null, 0 when absent.
	Inputs int
	// Prompts is the number of prompts of a completions request: the elements of a batch
	// (an array of strings or of token lists), 1 for a string or one token list, 0 when
	// absent. Each prompt gets n completions.
	Prompts int
	// PromptBytes is the size of the prompt field's JSON value (messages, prompt or input).
	PromptBytes int
	// Prefix is the first PrefixBytes bytes of that value at most (prefix affinity).
	Prefix []byte

	ep   Endpoint
	open int // index of the body's '{'
	// stream_options: value span (so < 0: absent); null, or an object without members.
	so, soEnd      int
	soNull, soZero bool
	// include_usage's value span inside stream_options (iu < 0: absent).
	iu, iuEnd int
	// max_tokens' value span (mt < 0: absent).
	mt, mtEnd int
}

// Interpreted keys.
const (
	kModel = iota
	kStream
	kStreamOptions
	kMaxTokens
	kMaxCompletionTokens
	kN
	kMessages
	kPrompt
	kInput
	numKeys
)

var keyNames = [numKeys]string{"model", "stream", "stream_options", "max_tokens", "max_completion_tokens", "n",
	"messages", "prompt", "input"}

const common = 1<<kModel | 1<<kStream | 1<<kStreamOptions | 1<<kMaxTokens | 1<<kMaxCompletionTokens

// interpreted[ep] is the set of keys read on endpoint ep.
var interpreted = [...]uint16{
	Chat:        common | 1<<kN | 1<<kMessages,
	Completions: common | 1<<kN | 1<<kPrompt,
	Embeddings:  common | 1<<kInput,
}

func keyOf(k []byte) int {
	switch string(k) {
	case "model":
		return kModel
	case "stream":
		return kStream
	case "stream_options":
		return kStreamOptions
	case "max_tokens":
		return kMaxTokens
	case "max_completion_tokens":
		return kMaxCompletionTokens
	case "n":
		return kN
	case "messages":
		return kMessages
	case "prompt":
		return kPrompt
	case "input":
		return kInput
	}
	return -1
}

const includeUsage = "include_usage"

// maxKeyRaw bounds the raw length of an escaped key that is decoded to be compared: a key
// longer than that decodes to more than 64 bytes, more than any interpreted name or its
// case variants can take.
const maxKeyRaw = 6 * 64

type parser struct {
	scanner
	ep     Endpoint
	f      Fields
	seen   uint16
	iuSeen bool
	err    *apierr.Error // first problem with a field
	encErr *apierr.Error // first encoding problem
}

// Parse validates body as one JSON object and reads the fields the gateway acts on. The
// error is an *apierr.Error (400) naming the problem: invalid JSON first, then an encoding
// problem (invalid UTF-8, unpaired surrogate), then the first field problem in the body's
// order, then a missing model, then the bounds of lim.
func Parse(body []byte, ep Endpoint, lim Limits) (Fields, error) {
	var p parser
	p.b, p.ep = body, ep
	f := &p.f
	f.MaxTokens, f.MaxCompletionTokens, f.N, f.ep = -1, -1, 1, ep
	f.so, f.soEnd, f.iu, f.iuEnd, f.mt, f.mtEnd = -1, -1, -1, -1, -1, -1
	b := body
	i := skipSpace(b, 0)
	if i >= len(b) {
		return *f, apierr.New(apierr.InvalidRequest, "request body is empty; send a JSON object")
	}
	if b[i] != '{' {
		if e, ok := p.value(i, 0); ok && skipSpace(b, e) == len(b) {
			return *f, apierr.New(apierr.InvalidRequest, "request body must be a JSON object")
		}
		return *f, syntaxError(b)
	}
	f.open = i
	if !p.object(i) {
		return *f, syntaxError(b)
	}
	if p.encErr != nil {
		return *f, p.encErr
	}
	if p.err != nil {
		return *f, p.err
	}
	if len(f.Model) == 0 {
		return *f, apierr.Param("model", "you must provide a model parameter")
	}
	switch {
	case lim.MaxN > 0 && f.N > lim.MaxN:
		return *f, apierr.Param("n", "n must be at most %d, got %d", lim.MaxN, f.N)
	case lim.MaxMessages > 0 && f.Messages > lim.MaxMessages:
		return *f, apierr.Param("messages", "messages may hold at most %d messages, got %d", lim.MaxMessages, f.Messages)
	case lim.MaxInputs > 0 && f.Inputs > lim.MaxInputs:
		return *f, apierr.Param("input", "input may hold at most %d items, got %d", lim.MaxInputs, f.Inputs)
	case lim.MaxInputs > 0 && f.Prompts > lim.MaxInputs:
		return *f, apierr.Param("prompt", "prompt may hold at most %d prompts, got %d", lim.MaxInputs, f.Prompts)
	}
	return *f, nil
}

// syntaxError names the problem of an invalid body the way encoding/json does.
func syntaxError(body []byte) *apierr.Error {
	msg := "request body is not valid JSON"
	var v any
	if err := json.Unmarshal(body, &v); err != nil {
		msg += ": " + err.Error()
	}
	return apierr.New(apierr.InvalidRequest, "%s", msg)
}

func (p *parser) fail(e *apierr.Error) {
	if p.err == nil {
		p.err = e
	}
}

// noteEnc records an encoding problem found while reading the member named param ("" when
// the problem is in a key that could not be read).
func (p *parser) noteEnc(param string) {
	if p.enc == encOK || p.encErr != nil {
		return
	}
	where := "request body"
	if param != "" {
		where = "`" + param + "`"
	}
	if p.enc == encUTF8 {
		p.encErr = &apierr.Error{Kind: apierr.InvalidRequest, Param: param,
			Message: "the " + where + " holds text that is not valid UTF-8"}
		return
	}
	p.encErr = &apierr.Error{Kind: apierr.InvalidRequest, Param: param,
		Message: "the " + where + " holds the escape \\u" + strconv.FormatInt(int64(p.surr), 16) +
			", half of a UTF-16 surrogate pair without its other half"}
}

// keyID returns the interpreted key whose literal (quotes included) is b[s:e] on this
// endpoint, or -1. inStreamOptions: the key of a member of stream_options (0 is
// include_usage).
func (p *parser) keyID(s, e int, esc, inStreamOptions bool) int {
	if !esc {
		return p.lookup(p.b[s+1:e-1], inStreamOptions)
	}
	if e-s-2 > maxKeyRaw {
		return -1
	}
	var buf [maxKeyRaw]byte // decoded only when escaped: most keys are not
	return p.lookup(unquote(buf[:0], p.b[s:e]), inStreamOptions)
}

// keyString returns the decoded key whose literal is b[s:e] (error messages).
func (p *parser) keyString(s, e int, esc bool) string {
	if !esc {
		return string(p.b[s+1 : e-1])
	}
	return string(unquote(nil, p.b[s:e]))
}

// mayFold reports whether k, not equal to any name, may still equal one but for case.
func mayFold(k []byte) bool {
	for _, c := range k {
		if (c >= 'A' && c <= 'Z') || c >= 0x80 {
			return true
		}
	}
	return false
}

// caseVariant refuses k when it equals name except for case (encoding/json would take it
// for name).
func (p *parser) caseVariant(k []byte, name, param string) bool {
	if len(k) > 3*len(name) || !bytes.EqualFold(k, []byte(name)) {
		return false
	}
	p.fail(apierr.Param(param, "unrecognized parameter `%s`: parameter names are case-sensitive (did you mean `%s`?)",
		string(k), name))
	return true
}

// lookup returns the interpreted key k stands for on this endpoint, or -1.
func (p *parser) lookup(k []byte, inStreamOptions bool) int {
	if inStreamOptions {
		if string(k) == includeUsage {
			return 0
		}
		if mayFold(k) {
			p.caseVariant(k, includeUsage, "stream_options."+string(k))
		}
		return -1
	}
	id := keyOf(k)
	if id >= 0 && interpreted[p.ep]&(1<<id) != 0 {
		return id
	}
	if id < 0 && mayFold(k) {
		for j := range numKeys {
			if interpreted[p.ep]&(1<<j) != 0 && p.caseVariant(k, keyNames[j], string(k)) {
				break
			}
		}
	}
	return -1
}

// object reads the top-level object at b[i] == '{' to the end of the body; false on a
// syntax error.
func (p *parser) object(i int) bool {
	b := p.b
	i = skipSpace(b, i+1)
	if i < len(b) && b[i] == '}' {
		return skipSpace(b, i+1) == len(b)
	}
	for {
		ks := i
		ke, esc, ok := p.str(i)
		if !ok {
			return false
		}
		id := -1
		if p.enc != encOK {
			p.noteEnc("")
		} else {
			id = p.keyID(ks, ke, esc, false)
		}
		i = skipSpace(b, ke)
		if i >= len(b) || b[i] != ':' {
			return false
		}
		vs := skipSpace(b, i+1)
		if id >= 0 {
			if p.seen&(1<<id) != 0 {
				p.fail(apierr.Param(keyNames[id], "duplicate parameter `%s`: send each parameter once", keyNames[id]))
				id = -1
			} else {
				p.seen |= 1 << id
			}
		}
		var ve int
		if id >= 0 {
			ve, ok = p.member(id, vs)
		} else {
			ve, ok = p.value(vs, 1)
		}
		if !ok {
			return false
		}
		if p.enc != encOK && p.encErr == nil {
			param := ""
			if id >= 0 {
				param = keyNames[id]
			} else {
				param = p.keyString(ks, ke, esc)
			}
			p.noteEnc(param)
		}
		i = skipSpace(b, ve)
		if i >= len(b) {
			return false
		}
		switch b[i] {
		case ',':
			i = skipSpace(b, i+1)
		case '}':
			return skipSpace(b, i+1) == len(b)
		default:
			return false
		}
	}
}

// member reads the value at b[i] of the interpreted key id.
func (p *parser) member(id, i int) (int, bool) {
	b, f := p.b, &p.f
	if i >= len(b) {
		return i, false
	}
	switch id {
	case kModel:
		if b[i] == '"' {
			e, esc, ok := p.str(i)
			if !ok {
				return e, false
			}
			if !esc {
				f.Model = b[i+1 : e-1]
			} else {
				f.Model = unquote(nil, b[i:e])
				if bytes.IndexByte(f.Model, 0) >= 0 {
					p.fail(apierr.Param("model", "model must not contain a NUL character"))
				}
			}
			return e, true
		}
		e, ok := p.value(i, 1)
		if ok && string(b[i:e]) != "null" {
			p.fail(apierr.Param("model", "model must be a string"))
		}
		return e, ok
	case kStream:
		e, ok := p.value(i, 1)
		switch string(b[i:e]) {
		case "true":
			f.Stream = p.ep != Embeddings
		case "false", "null":
		default:
			p.fail(apierr.Param("stream", "stream must be a boolean"))
		}
		return e, ok
	case kStreamOptions:
		f.so = i
		var e int
		var ok bool
		if b[i] == '{' {
			e, ok = p.streamOptions(i)
		} else {
			e, ok = p.value(i, 1)
			if string(b[i:e]) == "null" {
				f.soNull = true
			} else {
				p.fail(apierr.Param("stream_options", "stream_options must be an object"))
			}
		}
		f.soEnd = e
		return e, ok
	case kMaxTokens, kMaxCompletionTokens, kN:
		e, ok := p.value(i, 1)
		v := b[i:e]
		if id == kMaxTokens {
			f.mt, f.mtEnd = i, e
		}
		if !ok || string(v) == "null" {
			return e, ok
		}
		n, isInt := intValue(v)
		switch {
		case id == kN && (!isInt || n < 1):
			p.fail(apierr.Param("n", "n must be a positive integer"))
		case id == kN:
			f.N = n
		case !isInt || n < 0:
			p.fail(apierr.Param(keyNames[id], "%s must be a non-negative integer", keyNames[id]))
		case id == kMaxTokens:
			f.MaxTokens = n
		default:
			f.MaxCompletionTokens = n
		}
		return e, true
	default: // kMessages, kPrompt, kInput: the prompt field
		var e, n int
		var ok bool
		if b[i] == '[' {
			e, n, ok = p.array(i)
		} else {
			e, ok = p.value(i, 1)
			if ok && string(b[i:e]) != "null" {
				n = 1
			}
		}
		f.PromptBytes = e - i
		f.Prefix = b[i:min(e, i+PrefixBytes)]
		switch id {
		case kMessages:
			if b[i] == '[' {
				f.Messages = n
			}
		case kInput:
			f.Inputs = n
		case kPrompt:
			// A batch (strings or token lists) has a completion per prompt; a string or one
			// token list is one prompt.
			f.Prompts = n
			if j := skipSpace(b, i+1); b[i] == '[' && n > 0 && b[j] != '"' && b[j] != '[' {
				f.Prompts = 1
			}
		}
		return e, ok
	}
}

// array checks the array at b[i] == '[' (a member of the top-level object) and counts its
// elements.
func (p *parser) array(i int) (end, n int, ok bool) {
	b := p.b
	i = skipSpace(b, i+1)
	if i < len(b) && b[i] == ']' {
		return i + 1, 0, true
	}
	for {
		e, ok := p.value(i, 2)
		if !ok {
			return e, n, false
		}
		n++
		i = skipSpace(b, e)
		if i >= len(b) {
			return i, n, false
		}
		switch b[i] {
		case ']':
			return i + 1, n, true
		case ',':
			i++
		default:
			return i, n, false
		}
	}
}

// streamOptions reads the stream_options object at b[i] == '{'.
func (p *parser) streamOptions(i int) (int, bool) {
	b, f := p.b, &p.f
	i = skipSpace(b, i+1)
	if i < len(b) && b[i] == '}' {
		f.soZero = true
		return i + 1, true
	}
	for {
		ks := i
		ke, esc, ok := p.str(i)
		if !ok {
			return i, false
		}
		iu := p.enc == encOK && p.keyID(ks, ke, esc, true) == 0
		i = skipSpace(b, ke)
		if i >= len(b) || b[i] != ':' {
			return i, false
		}
		vs := skipSpace(b, i+1)
		ve, ok := p.value(vs, 2)
		if !ok {
			return ve, false
		}
		if iu {
			const param = "stream_options." + includeUsage
			switch string(b[vs:ve]) {
			case "true":
				f.IncludeUsage = true
			case "false", "null":
			default:
				p.fail(apierr.Param(param, "%s must be a boolean", param))
			}
			if p.iuSeen {
				p.fail(apierr.Param(param, "duplicate parameter `%s`: send each parameter once", param))
			}
			p.iuSeen = true
			f.iu, f.iuEnd = vs, ve
		}
		i = skipSpace(b, ve)
		if i >= len(b) {
			return i, false
		}
		switch b[i] {
		case ',':
			i = skipSpace(b, i+1)
		case '}':
			return i + 1, true
		default:
			return i, false
		}
	}
}

// intValue reads a JSON number with an integral value (10, 1e3 and 10.0 alike, as Python
// engines accept them) that fits an int64.
func intValue(v []byte) (int64, bool) {
	d := v
	if len(d) > 0 && d[0] == '-' {
		d = d[1:]
	}
	if len(d) > 0 && len(d) <= 19 {
		var n int64
		for _, c := range d {
			if c < '0' || c > '9' || n > (math.MaxInt64-int64(c-'0'))/10 {
				n = -1 // a fraction, an exponent or too large: see below
				break
			}
			n = n*10 + int64(c-'0')
		}
		if n >= 0 {
			if len(d) < len(v) {
				n = -n
			}
			return n, true
		}
	}
	x, err := strconv.ParseFloat(string(v), 64)
	if err != nil || x != math.Trunc(x) || x < -(1<<63) || x >= 1<<63 {
		return 0, false
	}
	return int64(x), true
}

// PromptEstimate is the prompt's size in tokens as the gateway estimates it before the
// engine counts: one token per 4 bytes of the prompt field's JSON (rounded up).
func (f *Fields) PromptEstimate() int64 { return int64(f.PromptBytes+3) / 4 }

// Reservation is the number of tokens to reserve at admission: for chat and completions
// n × (the larger of max_tokens and max_completion_tokens; outputCap when neither is given
// or both are 0) plus PromptEstimate, the output part once per prompt of a completions
// batch; for embeddings PromptEstimate alone. It saturates at math.MaxInt64.
func (f *Fields) Reservation(outputCap int64) int64 {
	prompt := f.PromptEstimate()
	if f.ep == Embeddings {
		return prompt
	}
	out := max(f.MaxTokens, f.MaxCompletionTokens)
	if out <= 0 {
		out = max(outputCap, 0)
	}
	n := max(f.N, 1)
	if f.Prompts > 1 {
		if n > math.MaxInt64/int64(f.Prompts) {
			return math.MaxInt64
		}
		n *= int64(f.Prompts)
	}
	if out > 0 && n > math.MaxInt64/out {
		return math.MaxInt64
	}
	out *= n
	if out > math.MaxInt64-prompt {
		return math.MaxInt64
	}
	return out + prompt
}
