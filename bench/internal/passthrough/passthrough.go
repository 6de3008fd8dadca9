// Package passthrough is the benchmark's reference floor: the thinnest fasthttp reverse
// proxy (no parsing beyond spotting a streamed request, no auth, no logging). It is not the
// product; it shows how much of the gateway's cost any fasthttp proxy pays anyway.
package passthrough

import (
	"bufio"
	"bytes"
	"io"
	"time"

	"github.com/valyala/fasthttp"
)

// Handler returns a request handler forwarding to upstream (host:port).
func Handler(upstream string) fasthttp.RequestHandler {
	plain := &fasthttp.HostClient{Addr: upstream, MaxConns: 20000, ReadTimeout: 5 * time.Minute}
	streaming := &fasthttp.HostClient{Addr: upstream, MaxConns: 20000, ReadTimeout: 5 * time.Minute, StreamResponseBody: true}
	streamMarker := []byte(`"stream":true`)
	return func(ctx *fasthttp.RequestCtx) {
		req := &ctx.Request
		req.SetHost(upstream)
		if !bytes.Contains(req.Body(), streamMarker) {
			if err := plain.Do(req, &ctx.Response); err != nil {
				ctx.Error(err.Error(), fasthttp.StatusBadGateway)
			}
			return
		}
		resp := fasthttp.AcquireResponse()
		if err := streaming.Do(req, resp); err != nil {
			fasthttp.ReleaseResponse(resp)
			ctx.Error(err.Error(), fasthttp.StatusBadGateway)
			return
		}
		ctx.SetStatusCode(resp.StatusCode())
		resp.Header.CopyTo(&ctx.Response.Header)
		ctx.Response.Header.Del("Content-Length")
		body := resp.BodyStream()
		ctx.SetBodyStreamWriter(func(w *bufio.Writer) {
			defer fasthttp.ReleaseResponse(resp)
			buf := make([]byte, 16<<10)
			for {
				n, err := body.Read(buf)
				if n > 0 {
					if _, werr := w.Write(buf[:n]); werr != nil {
						return
					}
					if werr := w.Flush(); werr != nil {
						return
					}
				}
				if err == io.EOF || err != nil {
					return
				}
			}
		})
	}
}

// Serve listens on addr until the server is shut down.
func Serve(addr, upstream string) error {
	s := &fasthttp.Server{Handler: Handler(upstream), Name: "passthrough", Concurrency: 100000}
	return s.ListenAndServe(addr)
}
