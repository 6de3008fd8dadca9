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

// setHeaders writes the headers a backend receives; in are the client's (every attempt
// is made while the handler runs, so they are still valid).
func (c *call) setHeaders(hd *fasthttp.RequestHeader, in *fasthttp.RequestHeader) {
	hd.SetContentType("application/json")
	hd.Set("X-Request-Id", c.reqID)
	// Client headers a backend may use (X-*, never our own identity headers).
	in.VisitAll(func(k, v []byte) {
		if len(k) > 2 && (k[0] == 'X' || k[0] == 'x') && k[1] == '-' && !equalFoldPrefix(k, "x-maas-") &&
			!equalFoldASCII(k, "X-Request-Id") && !equalFoldPrefix(k, "x-forwarded-") {
			hd.SetBytesKV(k, v)
		}
	})
}

func equalFoldPrefix(b []byte, p string) bool {
	return len(b) >= len(p) && equalFoldASCII(b[:len(p)], p)
}
