package proxy

import (
	"github.com/valyala/bytebufferpool"
	"github.com/valyala/fasthttp"

	"github.com/maas-platform/maas/gateway/internal/reqbody"
)

// rewrite builds the body a backend receives: the client's bytes unchanged, except two
// members the gateway needs (reqbody.Fields.Rewrites), whose bytes alone change:
//   - stream_options.include_usage for a stream that did not ask for it: the gateway
//     counts tokens from the usage chunk, and strips that chunk from the client's stream;
//   - max_tokens = the model's output cap when the body gives no output limit, so that
//     the engine cannot produce more than the reservation counted.
//
// Seam: a retrieval step (an app's knowledge base → system prompt) edits the body here,
// after admission and before dispatch; it must parse the edited body again
// (reqbody.Parse) if the reservation or these rewrites are to follow, and keep every other
// field byte for byte.
func (c *call) rewrite(body []byte) {
	c.body = bytebufferpool.Get()
	r := c.fields.Rewrites(int64(c.model.MaxOutputTokens))
	c.injected = r.IncludeUsage
	if r != (reqbody.Rewrite{}) {
		c.body.B = c.fields.AppendRewrite(c.body.B[:0], body, r)
	} else {
		c.body.B = append(c.body.B[:0], body...)
	}
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
