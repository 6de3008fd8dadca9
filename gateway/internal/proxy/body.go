package proxy

import (
	"io"

	"github.com/valyala/bytebufferpool"
	"github.com/valyala/fasthttp"

	"github.com/maas-platform/maas/pkg/apierr"
	"github.com/maas-platform/maas/pkg/linger"
)

// requestBody returns an inference request's whole body. The server streams request
// bodies (so that uploads forwarded to control are never held in memory); an inference
// body is read here, at once, bounded by MaxBodyBytes: a Content-Length past it is refused
// before a byte is read, a chunked body as soon as it crosses it. A body with a
// Content-Length (what clients send) costs what it cost when the server read it: one read
// into the request's own buffer.
func (h *Handler) requestBody(ctx *fasthttp.RequestCtx) ([]byte, error) {
	limit := h.o.MaxBodyBytes
	cl := ctx.Request.Header.ContentLength()
	if limit > 0 && cl > limit {
		return nil, h.bodyTooLarge(ctx)
	}
	s := ctx.RequestBodyStream()
	if cl >= 0 || limit <= 0 || s == nil {
		return ctx.PostBody(), nil
	}
	buf := bytebufferpool.Get()
	defer bytebufferpool.Put(buf)
	n, err := buf.ReadFrom(io.LimitReader(s, int64(limit)+1))
	if err != nil {
		ctx.SetConnectionClose()
		return nil, &apierr.Error{Kind: apierr.InvalidRequest, Message: "request body could not be read", Err: err}
	}
	if n > int64(limit) {
		return nil, h.bodyTooLarge(ctx)
	}
	ctx.Request.SetBody(buf.B)
	return ctx.PostBody(), nil
}

// bodyTooLarge is the 413 of a body past MaxBodyBytes (see RefuseUnread).
func (h *Handler) bodyTooLarge(ctx *fasthttp.RequestCtx) error {
	RefuseUnread(ctx)
	return apierr.New(apierr.TooLarge, "request body is larger than %d bytes", h.o.MaxBodyBytes)
}

// maxDrain is what the server reads of a body a handler left unread before it closes the
// connection instead (fasthttp's maxUnreadStreamBodySize).
const maxDrain = 256 << 10

// RefuseUnread prepares the answer to a request refused before its body was read (whole):
// the connection lingers on close, so that the client, still sending, reads the answer
// instead of a reset; and when the server will not drain what is left of the body (chunked,
// or longer than maxDrain), the answer says Connection: close, so that the client does not
// send its next request on a connection about to close.
func RefuseUnread(ctx *fasthttp.RequestCtx) {
	cl := ctx.Request.Header.ContentLength()
	if cl == 0 {
		return
	}
	linger.Mark(ctx.Conn())
	if cl < 0 || cl > maxDrain {
		ctx.SetConnectionClose()
	}
}
