package sim

import (
	"io"
	"strconv"
	"testing"

	"github.com/valyala/fasthttp"
)

// BenchmarkChatStream measures the simulator's own cost per streamed request, from the
// handler to the last byte of the body, with the whole stream written at once and flushed
// event by event (MAAS_SIM_FLUSH_EVERY_TOKEN). Allocations must not grow with the tokens.
func BenchmarkChatStream(b *testing.B) {
	for _, flush := range []bool{false, true} {
		for _, tokens := range []int{16, 64} {
			name := map[bool]string{false: "whole", true: "flushed"}[flush] + "/" + strconv.Itoa(tokens)
			b.Run(name, func(b *testing.B) {
				o := DefaultOptions()
				o.FlushEveryToken = flush
				s, err := New(o)
				if err != nil {
					b.Fatal(err)
				}
				body := []byte(`{"model":"sim-chat","messages":[{"role":"user","content":"Hello"}],"max_tokens":` +
					strconv.Itoa(tokens) + `,"ignore_eos":true,"stream":true,"stream_options":{"include_usage":true}}`)
				var ctx fasthttp.RequestCtx
				buf := make([]byte, 4096)
				b.ReportAllocs()
				for b.Loop() {
					ctx.Request.Reset()
					ctx.Response.Reset()
					ctx.Request.Header.SetMethod("POST")
					ctx.Request.SetRequestURI("/v1/chat/completions")
					ctx.Request.SetBody(body)
					s.handle(&ctx)
					if r := ctx.Response.BodyStream(); r != nil {
						for {
							if _, err := r.Read(buf); err == io.EOF {
								break
							}
						}
						_ = ctx.Response.CloseBodyStream()
					}
				}
			})
		}
	}
}
