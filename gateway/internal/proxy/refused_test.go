package proxy

import (
	"errors"
	"fmt"
	"net"
	"syscall"
	"testing"

	"github.com/valyala/fasthttp"

	"github.com/maas-platform/maas/gateway/internal/upstream"
)

// Only a connection nothing accepted makes a backend Unreachable (its breaker then probes
// its port); a connection that broke once made, or a timeout, is an ordinary Failure.
func TestJudgeRefusedConnection(t *testing.T) {
	refusedErr := &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}
	for _, tc := range []struct {
		name string
		f    failure
		want upstream.Outcome
	}{
		{"refused", failure{err: refusedErr}, upstream.Unreachable},
		{"refused, wrapped", failure{err: fmt.Errorf("send: %w", refusedErr)}, upstream.Unreachable},
		{"reset while reading", failure{err: &net.OpError{Op: "read", Net: "tcp", Err: syscall.ECONNRESET}}, upstream.Failure},
		{"closed mid-answer", failure{err: fasthttp.ErrConnectionClosed}, upstream.Failure},
		{"dial timeout", failure{err: fasthttp.ErrDialTimeout}, upstream.Failure},
		{"stale pooled connection", failure{err: errors.New("closed"), stale: true}, upstream.Neutral},
	} {
		if got := judge(tc.f).outcome; got != tc.want {
			t.Errorf("%s: outcome %v, want %v", tc.name, got, tc.want)
		}
	}
}
