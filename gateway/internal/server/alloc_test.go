//go:build !race

package server

import (
	"fmt"
	"testing"

	"github.com/valyala/fasthttp"
)

// TestHandlerChatAllocations: a non-streamed chat completion through the whole handler,
// every per-request feature on (fullHandler), allocates at most 4 times in steady state:
// the request id (it outlives the request in the usage record and the access log), the
// quota ticket, the backend lease and its breaker's completion func. Issue 15's budget is
// 5; building the URL sent upstream allocated twice more before it had its own scratch in
// the pooled call.
func TestHandlerChatAllocations(t *testing.T) {
	h := fullHandler(t)
	var ctx fasthttp.RequestCtx
	body := fmt.Sprintf(benchChatBody, 16, "")
	for range 100 { // warm the pools (calls, buffers, connections)
		handleChat(t, h, &ctx, body)
	}
	if allocs := testing.AllocsPerRun(1000, func() { handleChat(t, h, &ctx, body) }); allocs > 4 {
		t.Errorf("a non-streamed chat completion allocates %v times, want at most 4", allocs)
	}
}
