package proxy

import (
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
	body      []byte // the backend's answer to a failed request (read only to classify it)
	timedOut  bool   // one of our timers fired (first byte, idle)
	midStream bool   // the client has already received bytes
	shutdown  bool   // the gateway is cutting requests (shutdown grace over)
	// stale: the request failed on a reused pooled connection before any byte of its
	// answer, and not by a timeout: the backend closed the connection while it sat in the
	// pool (an engine restarted, or its keep-alive idle time ran out), so it never saw
	// the request.
	stale bool
	// clientGone: the client closed its connection, and the exchange was aborted for it.
	clientGone bool
}

// verdict is what a failure means for the request.
type verdict struct {
	err   *apierr.Error // the gateway's own error for the client (nil when relay)
	relay bool          // the backend's answer goes to the client as it is
	retry bool          // another backend may be tried (the client has seen nothing)
	// fresh: try once more on the same backend, on a new connection (stale).
	fresh   bool
	kind    string           // the kind label of maas_gateway_upstream_errors_total; "" none
	outcome upstream.Outcome // for the backend's circuit breaker
}

// judge is the one mapping from a backend failure to what the client sees, for streamed
// and non-streamed requests alike (README, "Errors, retries and circuit breakers"):
//
//   - the client gone → 499, shutdown → 503; neither says anything of the backend;
//   - a timeout → 504, any other transport error → 502, a 502/503/504 answer → the same
//     status as the gateway's own error: tried on another backend while the client has
//     seen nothing, and counted against the backend's breaker;
//   - a connection the backend refused (a dial error, not a timeout: nothing listens) is
//     counted as Unreachable: while the breaker it opened stays open, the backend's port is
//     probed, and the breaker closes as soon as a connection is accepted again (an engine
//     restart costs no 5 s tail); a connection broken after it was made is a Failure;
//   - but a stale pooled connection (not a timeout) → one more try on a new connection to
//     the same backend first, not counted against it;
//   - any other answer (400, 401, 404, 422, 429, 500, …) is relayed as the backend sent it
//     (status, body, Content-Type, Retry-After) and not retried. It counts against the
//     breaker only when it is a 5xx that does not blame the request (blamesRequest): a 4xx,
//     or a 500 whose body says the request was bad, is the client's doing.
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
	case f.stale:
		return verdict{err: &apierr.Error{Kind: apierr.BadGateway, Message: "the backend could not be reached", Err: f.err},
			fresh: true, kind: "stale", outcome: upstream.Neutral}
	case f.err != nil:
		out := upstream.Failure
		if refused(f.err) {
			out = upstream.Unreachable
		}
		return verdict{err: &apierr.Error{Kind: apierr.BadGateway, Message: "the backend could not be reached", Err: f.err},
			retry: true, kind: "connect", outcome: out}
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
	case f.status >= 500 && !blamesRequest(f.body):
		return verdict{relay: true, kind: "status", outcome: upstream.Failure}
	}
	return verdict{relay: true, outcome: upstream.Success}
}

// blamesRequest reports whether a backend's error body says the request was at fault: an
// OpenAI error object ({"error":{…}}, or vLLM's older flat {"object":"error",…}) whose
// type is invalid_request_error (OpenAI) or BadRequestError (vLLM), or whose code is a
// 4xx status number (vLLM puts the status it meant there).
func blamesRequest(body []byte) bool {
	e := member(body, "error")
	if len(e) == 0 || e[0] != '{' {
		e = body // the flat form
	}
	switch string(member(e, "type")) {
	case `"invalid_request_error"`, `"BadRequestError"`:
		return true
	}
	code, ok := intValue(member(e, "code"))
	return ok && code >= 400 && code < 500
}

// refused reports whether err is a failure to connect to the backend (nothing accepted
// the connection), as opposed to a connection that broke once made: only the former says
// the backend is away, which a reachability probe can tell the end of.
func refused(err error) bool {
	var oe *net.OpError
	return errors.As(err, &oe) && oe.Op == "dial"
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
