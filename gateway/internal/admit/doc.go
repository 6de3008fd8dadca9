// Package admit decides whether the gateway may start a request: per-subject (API key, user)
// requests per minute, tokens per minute, concurrent requests and a monthly token budget.
//
// A Limiter has two tiers. The local tier keeps per-subject state in memory
// (golang.org/x/time/rate token buckets, concurrency and budget counters) and is exact for one
// gateway. When a Redis URL is configured, the global tier decides instead: an atomic Lua
// script checks and charges every limit of every subject of a request, so all gateways share
// one limit. Admissions that arrive while a round trip is in flight are decided together by
// one script call in the next (a lone request is sent at once), each subject's state read
// and written once per batch; settlements are batched the same way in the background.
//
// For subjects whose limits are large enough, a gateway leases a share of them from Redis
// (Options.LeaseShare, 1/60 by default: one grant, one script call) and admits from the lease
// in memory until it runs short (lease.go); a grant is an admission like a request's, with
// the same exactly-once rules, charged when taken, and settled with what was used when the
// lease ends.
//
// Every admission in Redis carries an id and leaves a record, so it is charged and settled
// exactly once: an admission sent again charges nothing more, a settlement sent again
// corrects nothing more. A request whose reply does not come within RedisTimeout is decided
// by the local tier, and its admission in Redis, if the script ran, is undone in the
// background (request, tokens, budget refunded, slot released), so it is never charged on
// both tiers. The Limiter leaves Redis for the local tier only after FailuresToFallback
// failed round trips in a row, and returns after ProbesToRecover good probes in a row.
//
// Token limits are enforced by reservation: Admit charges the request's reservation (prompt
// estimate plus max output tokens) to the tokens-per-minute bucket and to the budget, and
// Ticket.Settle corrects both to the tokens actually used, so a long stream cannot overshoot
// a limit the way counting after the fact does.
//
// Buckets hold at most one minute's worth (burst = the per-minute limit) and refill
// continuously at limit/60 per second, so in any window of W seconds a subject is admitted at
// most limit × (1 + W/60): a full minute's burst, then the steady rate. With Redis this holds
// across all gateways to ±1 request without leases (every admission is one atomic script,
// clocked by Redis), and with leases to within what the gateways hold unspent (one grant
// each); during a Redis outage each gateway enforces it alone. The README lists the bound of each
// limit.
package admit
