// Package upstream keeps the pool of inference backends and picks one per request:
// least outstanding requests with power-of-two choices (weighted; engine-reported load as
// the tie-breaker), a per-model prefix-affinity policy (consistent hashing with bounded
// load) and weighted random; a per-backend in-flight cap; a bounded queue, fair across
// users, when every backend is full; and a circuit breaker per backend.
package upstream

import (
	"crypto/tls"
	"errors"
	"net"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"github.com/sony/gobreaker/v2"
	"github.com/valyala/fasthttp"

	"github.com/maas-platform/maas/gateway/internal/snapshot"
	"github.com/maas-platform/maas/pkg/registry"
)

// Upstream is one backend. Its counters are updated with atomics; it is safe for
// concurrent use. It lives as long as the backend stays registered, across snapshots.
type Upstream struct {
	ID   string
	Base string // scheme://host[:port][/path], no trailing slash
	// Client sends non-streamed requests (pooled keep-alive connections).
	Client *fasthttp.HostClient
	// Stream sends streamed requests: responses are read as a body stream, and every read
	// on its connections has a sliding deadline of StreamReadTimeout (a backend that stops
	// sending fails the read instead of holding the stream forever).
	Stream *fasthttp.HostClient
	// Fresh and FreshStream send the one retry of a request whose pooled connection turned
	// out closed by the backend (StaleStream): their pools stay empty (a request on them
	// is sent with "Connection: close" or its connection closed after it), so every
	// request dials a new connection. They dial with Client's and Stream's Dial.
	Fresh       *fasthttp.HostClient
	FreshStream *fasthttp.HostClient

	inFlight atomic.Int64
	capacity atomic.Int64
	weight   atomic.Int64
	// routable folds state healthy and not disabled.
	routable atomic.Bool
	waiting  atomic.Int64
	kvMilli  atomic.Int64 // KV-cache use × 1000

	// breaker is replaced by a closed one when a backend whose connections were refused
	// accepts them again (reachable.go); a lease keeps reporting to the breaker it took.
	breaker atomic.Pointer[gobreaker.TwoStepCircuitBreaker[struct{}]]
	// unreachable: the last failure reported was Unreachable (connection refused or
	// broken); an open breaker then probes the backend's port (reachable.go).
	unreachable atomic.Bool
	// probing: a reachability probe runs for the current open breaker.
	probing atomic.Bool
	addr    string
	opts    *Options
	changed func()
	// openUntil mirrors the breaker for usable: while it is open, the (real) time it may let
	// a probe through, in unix nanoseconds; 0 otherwise. Asking the breaker itself takes its
	// mutex and reads the clock, for every candidate of every request.
	openUntil atomic.Int64
	models    atomic.Pointer[[]string]
	removed   atomic.Bool
}

// InFlight is the number of requests the gateway has in flight on u.
func (u *Upstream) InFlight() int64 { return u.inFlight.Load() }

// Capacity is u's in-flight cap.
func (u *Upstream) Capacity() int64 { return u.capacity.Load() }

// BreakerState is u's circuit breaker state.
func (u *Upstream) BreakerState() gobreaker.State { return u.breaker.Load().State() }

// URL returns the absolute URL of path on u.
func (u *Upstream) URL(path string) string { return u.Base + path }

func (u *Upstream) tryAcquire() bool {
	c := u.capacity.Load()
	for {
		n := u.inFlight.Load()
		if n >= c {
			return false
		}
		if u.inFlight.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

// usable reports whether u may take new requests (ignoring capacity).
//
// Heartbeats are judged by control alone: its reaper marks a backend that missed 3 of
// them unhealthy, and the state reaches the gateway with the row. The gateway keeps no
// second clock on heartbeats: they travel worker → control → PostgreSQL → gateway, so a
// silence says as much about control or PostgreSQL being away as about the backend, and a
// second judge dropped every backend a few seconds into either outage. A backend that dies
// meanwhile is caught by passive health: a refused connection or a first-byte timeout
// fails over at once, and the breaker takes the backend out.
func (u *Upstream) usable() bool {
	if !u.routable.Load() || u.removed.Load() || u.weight.Load() <= 0 {
		return false
	}
	until := u.openUntil.Load()
	return until == 0 || time.Now().UnixNano() >= until // past it, Allow lets the probe decide
}

// applyLoad takes a backend's state and load figures from its row.
func (u *Upstream) applyLoad(l snapshot.Load) {
	u.routable.Store(l.State == registry.StateHealthy && !l.Disabled)
	u.waiting.Store(int64(l.Waiting))
	u.kvMilli.Store(int64(l.KVCache * 1000))
}

// load is the engine-reported load used to break ties (lower is better).
func (u *Upstream) load() int64 { return u.waiting.Load()*1000 + u.kvMilli.Load() }

// Outcome is how a request ended, for the breaker.
type Outcome uint8

const (
	// Success: the backend answered (a completed stream, or a status that says the
	// request, not the backend, was at fault: see the gateway's error rules).
	Success Outcome = iota
	// Failure: timeout, 502/503/504 or a 5xx that does not blame the request; counts
	// against the breaker.
	Failure
	// Neutral: the client went away or the request was cancelled; no health signal.
	Neutral
	// Unreachable: the backend could not be reached (connection refused, or broken
	// before an answer); counts against the breaker like Failure, and while the breaker
	// is open the backend's port is probed: it is back in service as soon as it accepts
	// connections again (reachable.go).
	Unreachable
)

var errFailed = errors.New("upstream: backend failed")

// Lease is one acquired slot on an Upstream. Release it exactly once.
type Lease struct {
	U     *Upstream
	pool  *Pool
	done  func(err error)
	Queue time.Duration // time spent waiting in the queue
}

// Release frees the slot and reports the outcome to u's breaker.
func (l *Lease) Release(o Outcome) {
	if l.done != nil {
		switch o {
		case Failure, Unreachable:
			// Set before the breaker hears of it: its trip (OnStateChange) reads it.
			l.U.unreachable.Store(o == Unreachable)
			l.done(errFailed)
		case Success:
			l.U.unreachable.Store(false)
			l.done(nil)
		default:
			// Neutral: a half-open probe that was cancelled must still finish; count it a
			// success so that a client hang-up does not keep a backend out of the pool.
			l.done(nil)
		}
		l.done = nil
	}
	l.U.inFlight.Add(-1)
	l.pool.released()
}

// connHeadroom is how many connections a client may open above the backend's capacity.
const connHeadroom = 64

// newUpstream builds the backend b; breakerChanged is called after each change of its
// breaker's state (with the breaker's lock held: it must not call into the breaker).
func newUpstream(b snapshot.Backend, o *Options, breakerChanged func()) (*Upstream, error) {
	base := strings.TrimRight(b.URL, "/")
	pu, err := url.Parse(base)
	if err != nil || pu.Host == "" {
		return nil, &url.Error{Op: "parse", URL: b.URL, Err: err}
	}
	addr := pu.Host
	isTLS := pu.Scheme == "https"
	if pu.Port() == "" {
		if isTLS {
			addr += ":443"
		} else {
			addr += ":80"
		}
	}
	connect := o.ConnectTimeout
	u := &Upstream{ID: b.ID, Base: base, addr: addr, opts: o, changed: breakerChanged}
	idle := o.IdleTimeout
	if idle <= 0 {
		idle = DefaultOptions().IdleTimeout
	}
	u.Client = &fasthttp.HostClient{
		Addr:                          addr,
		IsTLS:                         isTLS,
		TLSConfig:                     &tls.Config{MinVersion: tls.VersionTLS12},
		Name:                          "maas-gateway",
		MaxIdleConnDuration:           idle,
		DisableHeaderNamesNormalizing: false,
		NoDefaultUserAgentHeader:      true,
		MaxResponseBodySize:           o.MaxResponseBytes,
		Dial: func(a string) (net.Conn, error) {
			return fasthttp.DialTimeout(a, connect)
		},
	}
	slide := o.StreamReadTimeout
	u.Stream = &fasthttp.HostClient{
		Addr:                     addr,
		IsTLS:                    isTLS,
		TLSConfig:                &tls.Config{MinVersion: tls.VersionTLS12},
		Name:                     "maas-gateway",
		MaxIdleConnDuration:      idle,
		NoDefaultUserAgentHeader: true,
		StreamResponseBody:       true,
		ReadBufferSize:           4 << 10,
		WriteBufferSize:          2 << 10,
		Dial: func(a string) (net.Conn, error) {
			c, err := fasthttp.DialTimeout(a, connect)
			if err != nil {
				return c, err
			}
			sc := &streamConn{Conn: c, slide: slide}
			sc.laddr = connAddr{Addr: c.LocalAddr(), c: sc}
			return sc, nil
		},
	}
	u.Fresh = &fasthttp.HostClient{
		Addr: addr, IsTLS: isTLS, TLSConfig: u.Client.TLSConfig, Name: "maas-gateway",
		NoDefaultUserAgentHeader: true, MaxResponseBodySize: o.MaxResponseBytes,
		Dial: func(a string) (net.Conn, error) { return u.Client.Dial(a) },
	}
	u.FreshStream = &fasthttp.HostClient{
		Addr: addr, IsTLS: isTLS, TLSConfig: u.Stream.TLSConfig, Name: "maas-gateway",
		NoDefaultUserAgentHeader: true, StreamResponseBody: true, ReadBufferSize: 4 << 10, WriteBufferSize: 2 << 10,
		Dial: func(a string) (net.Conn, error) { return u.Stream.Dial(a) },
	}
	u.breaker.Store(u.newBreaker())
	u.update(b)
	u.applyLoad(b.Load)
	return u, nil
}

func (u *Upstream) update(b snapshot.Backend) {
	capacity := max(b.Capacity, 1)
	u.capacity.Store(int64(capacity))
	// The in-flight cap already bounds the connections each client needs; the clients'
	// own limit follows it, with headroom for connections being handed back as a new
	// request starts (fasthttp fails a request at once when no connection is free).
	u.Client.SetMaxConns(capacity + connHeadroom)
	u.Stream.SetMaxConns(capacity + connHeadroom)
	u.Fresh.SetMaxConns(capacity + connHeadroom)
	u.FreshStream.SetMaxConns(capacity + connHeadroom)
	u.weight.Store(int64(b.Weight))
	models := b.Models
	u.models.Store(&models)
}

// DropIdle closes the idle pooled connections of u's clients. Called when one of them was
// found closed by the backend (a restarted engine): those opened before are closed too.
func (u *Upstream) DropIdle() {
	u.Client.CloseIdleConnections()
	u.Stream.CloseIdleConnections()
}

// StaleStream reports whether a request sent by u.Stream (or u.FreshStream) into resp,
// which failed with err, failed on a reused connection before any byte of its answer: the
// connection carried an earlier exchange, the request's answer had not sent one byte,
// and the failure was not a timeout (a backend that may be working on the request). Such
// a connection was closed by the backend while it sat in the pool (an engine restarted,
// or closed it after its keep-alive idle time): the backend never saw the request.
func StaleStream(resp *fasthttp.Response, err error) bool {
	a, ok := resp.LocalAddr().(*connAddr) // set by the transport from the connection used
	if err == nil || !ok || a.c == nil {
		return false
	}
	if errors.Is(err, fasthttp.ErrTimeout) {
		return false
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return false
	}
	return a.c.exchanges > 1 && !a.c.answered
}

// streamConn is a stream connection. It keeps what StaleStream needs (how many requests
// the connection has carried, whether the current one has had a byte of its answer), and
// gives every Read a fresh deadline when slide > 0, so a deadline bounds the silence
// between two reads rather than the whole (possibly long) stream. Deadlines set by the
// HTTP client for a whole response are then replaced by this sliding one. The deadline is
// moved only when it is more than slide/16 old (a stream reads once per event; moving a
// deadline is a timer update): a read may wait between 15/16 of slide and slide.
//
// A connection is used by one exchange at a time (HTTP/1.1, no pipelining): its fields
// are touched by that exchange's goroutine only, handed over through the client's pool.
type streamConn struct {
	net.Conn
	slide time.Duration
	setAt time.Time // when the read deadline was last moved
	laddr connAddr
	// exchanges counts requests begun (the first write after an answer was read begins
	// one); answered: a byte of the current one's answer was read.
	exchanges uint32
	answered  bool
	writing   bool
}

// connAddr is the connection's local address, carrying the connection itself: the
// client's transport records it in the Response (LocalAddr), which is how StaleStream
// finds the connection a failed request used.
type connAddr struct {
	net.Addr
	c *streamConn
}

func (c *streamConn) LocalAddr() net.Addr { return &c.laddr }

func (c *streamConn) Write(p []byte) (int, error) {
	if !c.writing {
		c.writing, c.answered = true, false
		c.exchanges++
	}
	return c.Conn.Write(p)
}

func (c *streamConn) Read(p []byte) (int, error) {
	if c.slide > 0 {
		now := time.Now()
		if now.Sub(c.setAt) > c.slide/16 {
			if err := c.Conn.SetReadDeadline(now.Add(c.slide)); err != nil {
				return 0, err
			}
			c.setAt = now
		}
	}
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.answered, c.writing = true, false
	}
	return n, err
}

func (c *streamConn) SetReadDeadline(t time.Time) error {
	if c.slide > 0 {
		return nil
	}
	return c.Conn.SetReadDeadline(t)
}

func (c *streamConn) SetDeadline(t time.Time) error {
	if c.slide > 0 {
		return c.Conn.SetWriteDeadline(t)
	}
	return c.Conn.SetDeadline(t)
}

// newBreaker returns a closed breaker for u.
func (u *Upstream) newBreaker() *gobreaker.TwoStepCircuitBreaker[struct{}] {
	o := u.opts
	var br *gobreaker.TwoStepCircuitBreaker[struct{}]
	br = gobreaker.NewTwoStepCircuitBreaker[struct{}](gobreaker.Settings{
		Name:        u.ID,
		MaxRequests: 1,
		Interval:    o.BreakerInterval,
		Timeout:     o.BreakerOpenFor,
		ReadyToTrip: func(c gobreaker.Counts) bool {
			return c.ConsecutiveFailures >= o.BreakerFailures
		},
		OnStateChange: func(name string, from, to gobreaker.State) {
			if to == gobreaker.StateOpen {
				u.openUntil.Store(time.Now().Add(o.BreakerOpenFor).UnixNano())
				if u.unreachable.Load() {
					u.probeUntilReachable(br)
				}
			} else {
				u.openUntil.Store(0)
			}
			o.Logger.Warn("backend circuit breaker changed state", "backend", name, "from", from.String(), "to", to.String())
			if u.changed != nil {
				u.changed()
			}
		},
	})
	return br
}
