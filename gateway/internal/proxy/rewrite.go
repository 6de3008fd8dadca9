package proxy

import (
	"bytes"

	"github.com/valyala/bytebufferpool"
	"github.com/valyala/fasthttp"
)

// rewrite builds the body a backend receives: the client's bytes unchanged, unless a
// stream needs stream_options.include_usage (the gateway counts tokens from the usage
// chunk, and strips that chunk from the client's stream when it asked for it itself).
//
// Seam: a retrieval step (an app's knowledge base → system prompt) edits the body here,
// after admission and before dispatch; it must update c.fields (promptBytes) if the
// reservation is to follow, and keep every other field byte for byte.
func (c *call) rewrite(body []byte) {
	c.body = bytebufferpool.Get()
	if c.fields.stream && !c.fields.includeUsage {
		c.injected = true
		c.body.B = injectIncludeUsage(c.body.B[:0], body, c.fields.soStart, c.fields.soEnd)
	} else {
		c.body.B = append(c.body.B[:0], body...)
	}
}

// injectIncludeUsage writes body with stream_options.include_usage set to true; every
// other field is kept byte for byte. [soStart, soEnd) is the stream_options value (-1
// when absent).
func injectIncludeUsage(dst, body []byte, soStart, soEnd int) []byte {
	var so []byte
	if soStart >= 0 {
		so = body[soStart:soEnd]
	}
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

// defaultForward are the client headers every backend receives (W3C trace context).
var defaultForward = []string{"traceparent", "tracestate"}

// setHeaders writes the headers a backend receives: our request id, the trace context and
// the operator's extra names (Options.ForwardHeaders), nothing else — a client's other
// headers (an engine's failure injection, say) never reach an engine. in are the client's
// headers (every attempt is made while the handler runs, so they are still valid).
func (c *call) setHeaders(hd *fasthttp.RequestHeader, in *fasthttp.RequestHeader) {
	hd.SetContentType("application/json")
	hd.Set("X-Request-Id", c.reqID)
	for _, name := range c.h.forward {
		if v := in.Peek(name); len(v) > 0 {
			hd.SetBytesV(name, v)
		}
	}
}

// forwardable reports whether an operator may add name to the forwarded headers: a valid
// header name that is not the gateway's own (identity, request id, hop-by-hop, framing).
func forwardable(name string) bool {
	if name == "" {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !(c == '-' || c == '_' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z') {
			return false
		}
	}
	b := []byte(name)
	for _, p := range []string{"x-maas-", "x-forwarded-"} {
		if equalFoldPrefix(b, p) {
			return false
		}
	}
	for _, s := range []string{"Authorization", "Cookie", "Host", "Content-Length", "Content-Type", "Transfer-Encoding",
		"Connection", "Keep-Alive", "Upgrade", "TE", "Trailer", "Expect", "Proxy-Authorization", "X-Request-Id"} {
		if equalFoldASCII(b, s) {
			return false
		}
	}
	return true
}

func equalFoldPrefix(b []byte, p string) bool {
	return len(b) >= len(p) && equalFoldASCII(b[:len(p)], p)
}
