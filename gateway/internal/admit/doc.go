// Package admit decides whether the gateway may start a request: per-subject (API key, user)
// requests per minute, tokens per minute, concurrent requests and a monthly token budget.
//
// A Limiter has two tiers. The local tier keeps per-subject state in memory
// (golang.org/x/time/rate token buckets, concurrency and budget counters) and is exact for one
// gateway. When a Redis URL is configured, the global tier decides instead: one atomic Lua
// script per Admit checks and charges every limit of every subject of the request, so all
// gateways share one limit. When Redis fails or answers too slowly the Limiter falls back to
// the local tier until a background probe sees Redis again.
//
// Token limits are enforced by reservation: Admit charges the request's reservation (prompt
// estimate plus max output tokens) to the tokens-per-minute bucket and to the budget, and
// Ticket.Settle corrects both to the tokens actually used, so a long stream cannot overshoot
// a limit the way counting after the fact does.
//
// Buckets hold at most one minute's worth (burst = the per-minute limit) and refill
// continuously at limit/60 per second, so in any window of W seconds a subject is admitted at
// most limit × (1 + W/60): a full minute's burst, then the steady rate. With Redis this holds
// across all gateways to ±1 request (every admission is one atomic script, clocked by Redis);
// during a Redis outage each gateway enforces it alone. The README lists the bound of each
// limit.
package admit
