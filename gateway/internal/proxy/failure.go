package proxy

import (
	"encoding/json"
	"errors"
	"net"

	"github.com/valyala/fasthttp"

	"github.com/maas-platform/maas/gateway/internal/upstream"
	"github.com/maas-platform/maas/pkg/apierr"
)

// failure is how an attempt on a backend went wrong, before it becomes the client's error.
type failure struct {
	err       error  // transport error; nil when the backend answered with status
	status    int    // the backend's status when it answered (not 200)
	body      []byte // the backend's error body, whose message a refusal relays
	timedOut  bool   // one of our timers fired (first byte, idle)
	midStream bool   // the client has already received bytes
	shutdown  bool   // the gateway is cutting requests (shutdown grace over)
	// clientGone: the client closed its connection, and the exchange was aborted for it.
	clientGone bool
}

// verdict is what a failure means for the request.
type verdict struct {
	err     *apierr.Error
	retry   bool             // another backend may be tried (the client has seen nothing)
	kind    string           // the kind label of maas_gateway_upstream_errors_total; "" none
	outcome upstream.Outcome // for the backend's circuit breaker
}

// judge is the one mapping from a backend failure to the client's error: the client gone →
// 499 (no health signal), shutdown → 503,
// timeout → 504, anything else from the transport → 502, and 502/503/504 from a backend
// are retried elsewhere; any other refusal (a 400, say) is the client's error, relayed.
func judge(f failure) verdict {
	switch {
	case f.clientGone:
		return verdict{err: &apierr.Error{Kind: apierr.ClientClosed, Message: "the client closed the request", Err: f.err},
			outcome: upstream.Neutral}
	case f.shutdown:
		return verdict{err: &apierr.Error{Kind: apierr.Unavailable, Message: "the gateway is shutting down", Err: f.err},
			outcome: upstream.Neutral}
	case f.midStream && f.timedOut:
		return verdict{err: &apierr.Error{Kind: apierr.UpstreamTimeout, Message: "the backend stopped sending events"},
			kind: "timeout", outcome: upstream.Failure}
	case f.midStream:
		return verdict{err: &apierr.Error{Kind: apierr.BadGateway, Message: "the backend stream broke off", Err: f.err},
			kind: "stream", outcome: upstream.Failure}
	case f.err != nil && isTimeout(f.err, f.timedOut):
		return verdict{err: &apierr.Error{Kind: apierr.UpstreamTimeout, Message: "the backend did not answer in time", Err: f.err},
			retry: true, kind: "timeout", outcome: upstream.Failure}
	case f.err != nil:
		return verdict{err: &apierr.Error{Kind: apierr.BadGateway, Message: "the backend could not be reached", Err: f.err},
			retry: true, kind: "connect", outcome: upstream.Failure}
	case f.status == 502 || f.status == 503 || f.status == 504:
		kind := apierr.BadGateway
		switch f.status {
		case 503:
			kind = apierr.Unavailable
		case 504:
			kind = apierr.UpstreamTimeout
		}
		return verdict{err: &apierr.Error{Kind: kind, Message: "the backend failed (status " + itoa(f.status) + ")"},
			retry: true, kind: "status", outcome: upstream.Failure}
	}
	// The backend refused the request (e.g. 400): relay its OpenAI error message.
	var env struct {
		Error struct {
			Message string `json:"message"`
		} `json:"error"`
	}
	if len(f.body) > 0 {
		_ = json.Unmarshal(f.body, &env)
	}
	msg := env.Error.Message
	if msg == "" {
		msg = "the backend refused the request (status " + itoa(f.status) + ")"
	}
	v := verdict{err: &apierr.Error{Kind: apierr.InvalidRequest, Message: msg}, outcome: upstream.Success}
	switch {
	case f.status == 404:
		v.err.Kind = apierr.NotFound
	case f.status == 413:
		v.err.Kind = apierr.TooLarge
	case f.status == 422:
		v.err.Kind = apierr.Unprocessable
	case f.status >= 500:
		v.err.Kind, v.kind, v.outcome = apierr.BadGateway, "status", upstream.Failure
	}
	return v
}

func isTimeout(err error, timedOut bool) bool {
	var ne net.Error
	return timedOut || errors.Is(err, fasthttp.ErrTimeout) || (errors.As(err, &ne) && ne.Timeout())
}

// classify maps a transport error (no answer from the other side) to the client's error.
func classify(err error, timedOut bool) *apierr.Error {
	return judge(failure{err: err, timedOut: timedOut}).err
}

func itoa(n int) string {
	var b [20]byte
	i := len(b)
	if n == 0 {
		return "0"
	}
	neg := n < 0
	if neg {
		n = -n
	}
	for n > 0 {
		i--
		b[i] = byte('0' + n%10)
		n /= 10
	}
	if neg {
		i--
		b[i] = '-'
	}
	return string(b[i:])
}
