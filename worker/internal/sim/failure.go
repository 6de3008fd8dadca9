package sim

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/maas-platform/maas/pkg/config"
)

// FailHeader is the request header that injects a failure into that one request. It is
// honoured only when Options.FailHeaderEnabled (MAAS_SIM_FAIL_HEADER) is set.
const FailHeader = "X-Sim-Fail"

// Failure is an injected failure. Its zero value injects nothing.
//
// Syntax (the X-Sim-Fail header, MAAS_SIM_FAIL): directives separated by commas, e.g.
// "slow-first-byte=200ms,drop-after=3".
//
//	status=N             answer status N (400..599) with an OpenAI error body, code
//	                     "simulated_failure" (429 and 503 add Retry-After: 1)
//	hang                 accept the request and never answer; the connection stays open
//	                     until the client closes it or the simulator stops
//	stall                accept the connection and read the request's headers, then never
//	                     read its body nor answer, not even the interim "100 Continue" a
//	                     request with Expect: 100-continue waits for (a wedged process, a
//	                     full accept queue, a black hole); without that header the body
//	                     has been read already and stall acts as hang
//	drop-after=N         close the TCP connection abruptly: a stream after N events
//	                     (events as sent: a chat stream's first is the role chunk, then
//	                     one per token), a non-streamed answer after N bytes of its body
//	                     (headers sent, Content-Length announcing the full body)
//	malformed            a streamed answer gets one event that is not valid JSON after its
//	                     first event (then goes on normally); a non-streamed answer is
//	                     cut in half (status 200, invalid JSON)
//	slow-first-byte=D    wait D before sending anything, headers included
type Failure struct {
	Status        int
	Hang          bool
	Stall         bool
	DropAfter     int // active when Drop
	Drop          bool
	Malformed     bool
	SlowFirstByte time.Duration
}

// IsZero reports whether f injects nothing.
func (f Failure) IsZero() bool { return f == Failure{} }

// String returns f in the header syntax.
func (f Failure) String() string {
	var parts []string
	if f.SlowFirstByte > 0 {
		parts = append(parts, "slow-first-byte="+f.SlowFirstByte.String())
	}
	if f.Status != 0 {
		parts = append(parts, "status="+strconv.Itoa(f.Status))
	}
	if f.Hang {
		parts = append(parts, "hang")
	}
	if f.Stall {
		parts = append(parts, "stall")
	}
	if f.Drop {
		parts = append(parts, "drop-after="+strconv.Itoa(f.DropAfter))
	}
	if f.Malformed {
		parts = append(parts, "malformed")
	}
	return strings.Join(parts, ",")
}

// mode names f for the failure metric's label (bounded set).
func (f Failure) mode() string {
	switch {
	case f.Status != 0:
		return "status"
	case f.Hang:
		return "hang"
	case f.Stall:
		return "stall"
	case f.Drop:
		return "drop"
	case f.Malformed:
		return "malformed"
	case f.SlowFirstByte > 0:
		return "slow_first_byte"
	}
	return "none"
}

// ParseFailure parses the X-Sim-Fail syntax. The empty string is no failure.
func ParseFailure(s string) (Failure, error) {
	var f Failure
	for _, item := range strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ';' || r == '|' }) {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		key, val, hasVal := strings.Cut(item, "=")
		key, val = strings.ToLower(strings.TrimSpace(key)), strings.TrimSpace(val)
		switch key {
		case "status":
			n, err := strconv.Atoi(val)
			if err != nil || n < 400 || n > 599 {
				return Failure{}, fmt.Errorf("status=%q: want a number 400..599", val)
			}
			f.Status = n
		case "hang":
			f.Hang = true
		case "stall":
			f.Stall = true
		case "drop-after":
			n, err := strconv.Atoi(val)
			if err != nil || n < 0 {
				return Failure{}, fmt.Errorf("drop-after=%q: want a number >= 0", val)
			}
			f.Drop, f.DropAfter = true, n
		case "malformed":
			f.Malformed = true
		case "slow-first-byte":
			d, err := config.ParseDuration(val)
			if err != nil || !hasVal {
				return Failure{}, fmt.Errorf("slow-first-byte=%q: want a duration such as 500ms", val)
			}
			f.SlowFirstByte = d
		default:
			return Failure{}, fmt.Errorf("unknown directive %q (status=N, hang, stall, drop-after=N, malformed, slow-first-byte=D)", key)
		}
	}
	return f, nil
}
