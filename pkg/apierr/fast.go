package apierr

import "github.com/valyala/fasthttp"

// WriteFast writes err to a fasthttp response in the OpenAI error shape and returns the
// *Error written, for logging.
func WriteFast(ctx *fasthttp.RequestCtx, err error) *Error {
	e := From(err)
	ctx.Response.Header.SetContentType("application/json")
	for _, h := range e.Headers() {
		ctx.Response.Header.Set(h[0], h[1])
	}
	ctx.SetStatusCode(e.Kind.Status())
	ctx.SetBody(e.Envelope())
	return e
}
