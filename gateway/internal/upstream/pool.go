package upstream

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cespare/xxhash/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/sony/gobreaker/v2"

	"github.com/maas-platform/maas/gateway/internal/snapshot"
	"github.com/maas-platform/maas/pkg/apierr"
)

// Errors of Acquire.
var (
	// ErrNoBackend: no healthy backend serves the model (503).
	ErrNoBackend = errors.New("upstream: no healthy backend")
	// ErrQueueFull: every backend is full and so is the queue (503).
	ErrQueueFull = errors.New("upstream: queue full")
	// ErrQueueTimeout: every backend stayed full for the whole queue timeout (503).
	ErrQueueTimeout = errors.New("upstream: queue timeout")
)

// Options configures a Pool.
type Options struct {
	ConnectTimeout   time.Duration
	MaxResponseBytes int
	QueueTimeout     time.Duration
	QueueSize        int
	// BreakerFailures consecutive failures open a backend's breaker for BreakerOpenFor.
	BreakerFailures uint32
	BreakerOpenFor  time.Duration
	BreakerInterval time.Duration
	// AffinityLoadFactor bounds prefix affinity: a backend takes a request only while its
	// in-flight count stays under factor × the average (consistent hashing with bounded loads).
	AffinityLoadFactor float64
	// StreamReadTimeout bounds the silence between two reads of a streamed response
	// (waiting for its headers included); 0 disables it.
	StreamReadTimeout time.Duration
	// IdleTimeout closes a pooled connection to a backend after it sat idle this long. It
	// must stay below the engines' own keep-alive timeout (vLLM and SGLang close idle
	// connections after 5 s), so that the gateway, not the engine, closes idle connections.
	IdleTimeout time.Duration
	Logger      *slog.Logger
	Registerer  prometheus.Registerer
	Now         func() time.Time
}

// DefaultOptions returns the defaults.
func DefaultOptions() Options {
	return Options{
		ConnectTimeout:     2 * time.Second,
		MaxResponseBytes:   64 << 20,
		QueueTimeout:       10 * time.Second,
		QueueSize:          4096,
		BreakerFailures:    3,
		BreakerOpenFor:     5 * time.Second,
		BreakerInterval:    10 * time.Second,
		AffinityLoadFactor: 1.25,
		StreamReadTimeout:  70 * time.Second,
		IdleTimeout:        3 * time.Second,
		Now:                time.Now,
	}
}

// group is the backends serving one model, with its hash ring.
type group struct {
	ups  []*Upstream
	ring []ringPoint
}

type ringPoint struct {
	h uint64
	u *Upstream
}

type members struct {
	byID   map[string]*Upstream
	byName map[string]*group // by canonical model name
	// models is every enabled model of the snapshot (canonical names, sorted), with or
	// without backends: the label values of maas_gateway_model_healthy_backends.
	models []string
}

// Pool is the set of backends. Safe for concurrent use.
type Pool struct {
	o      Options
	m      atomic.Pointer[members]
	syncMu sync.Mutex

	qmu     sync.Mutex
	queued  atomic.Int64
	users   map[int64]*userQueue
	ring    []int64 // users with waiters, round-robin order
	cursor  int
	metrics poolMetrics
	health  healthGauge

	// awaiting counts requests waiting for a model to get a backend at all (an adapter
	// being loaded on demand, await.go); they count as queued. changed is closed and
	// replaced at each Sync and UpdateLoad, waking them.
	awaiting atomic.Int64
	changeMu sync.Mutex
	changed  chan struct{}
}

type userQueue struct {
	waiters []*waiter
}

type waiter struct {
	model   *snapshot.Model
	exclude []*Upstream
	ch      chan *Lease
	start   time.Time
}

// New returns an empty pool.
func New(o Options) (*Pool, error) {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.AffinityLoadFactor < 1 {
		o.AffinityLoadFactor = 1.25
	}
	p := &Pool{o: o, users: map[int64]*userQueue{}, changed: make(chan struct{})}
	p.m.Store(&members{byID: map[string]*Upstream{}, byName: map[string]*group{}})
	if err := p.metrics.register(p, o.Registerer); err != nil {
		return nil, err
	}
	if err := p.health.register(o.Registerer); err != nil {
		return nil, err
	}
	return p, nil
}

// Sync makes the pool match s: new backends are added, gone ones removed, changed ones
// updated, and the per-model groups rebuilt. Counters of kept backends survive.
func (p *Pool) Sync(s *snapshot.Snapshot) {
	p.syncMu.Lock()
	defer p.syncMu.Unlock()
	old := p.m.Load()
	next := &members{byID: make(map[string]*Upstream, len(s.Backends)), byName: map[string]*group{}}
	for _, b := range s.Backends {
		u := old.byID[b.ID]
		if u != nil && u.Base != trimBase(b.URL) {
			u = nil // moved: new connections
		}
		if u == nil {
			var err error
			if u, err = newUpstream(b, &p.o, p.refreshHealth); err != nil {
				p.o.Logger.Warn("backend has an invalid URL; ignored", "backend", b.ID, "err", err)
				continue
			}
		} else {
			u.update(b)
		}
		next.byID[b.ID] = u
	}
	for id, u := range old.byID {
		if next.byID[id] != u {
			u.removed.Store(true)
			u.Client.CloseIdleConnections()
			u.Stream.CloseIdleConnections()
		}
	}
	for _, m := range s.Models() {
		if m.Enabled {
			next.models = append(next.models, m.Name)
		}
		g := &group{}
		for _, b := range s.Backends {
			if u := next.byID[b.ID]; u != nil && m.ServedBy(b.Models) {
				g.ups = append(g.ups, u)
			}
		}
		if len(g.ups) == 0 {
			continue
		}
		if m.Policy == snapshot.PolicyPrefixAffinity {
			g.ring = buildRing(g.ups)
		}
		next.byName[m.Name] = g
	}
	p.m.Store(next)
	p.refreshHealth()
	p.dispatch() // new capacity may serve waiters
	p.notifyChanged()
}

func trimBase(u string) string {
	for len(u) > 0 && u[len(u)-1] == '/' {
		u = u[:len(u)-1]
	}
	return u
}

// UpdateLoad applies fresh load figures and heartbeat ages.
func (p *Pool) UpdateLoad(loads []snapshot.Load) {
	m := p.m.Load()
	for _, l := range loads {
		if u := m.byID[l.ID]; u != nil {
			u.applyLoad(l)
		}
	}
	p.refreshHealth()
	p.dispatch()
	p.notifyChanged()
}

// Upstreams returns the current backends (for metrics and tests).
func (p *Pool) Upstreams() []*Upstream {
	m := p.m.Load()
	out := make([]*Upstream, 0, len(m.byID))
	for _, u := range m.byID {
		out = append(out, u)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// Get returns the backend with id, or nil.
func (p *Pool) Get(id string) *Upstream { return p.m.Load().byID[id] }

// Request describes what Acquire needs.
type Request struct {
	Model *snapshot.Model
	// User is the tenant, for queue fairness.
	User int64
	// Affinity is a hash of the prompt's prefix (prefix-affinity policy); 0 when unknown.
	Affinity uint64
	// Exclude lists backends already tried by this request.
	Exclude []*Upstream
}

// Acquire picks a backend for r and takes one of its slots, waiting in the fair queue
// when every backend is full. Errors are *apierr.Error values ready for the client.
func (p *Pool) Acquire(ctx context.Context, r Request) (*Lease, error) {
	l, anyUsable := p.pick(r.Model, r.Affinity, r.Exclude)
	if l != nil {
		return l, nil
	}
	if !anyUsable {
		return nil, &apierr.Error{Kind: apierr.Unavailable, Message: "no healthy backend is serving model " + r.Model.Name,
			Code: "no_backend", RetryAfter: time.Second, Err: ErrNoBackend}
	}
	return p.wait(ctx, r)
}

// pick tries to take a slot without waiting. anyUsable reports whether some backend
// could serve the model if it had room.
func (p *Pool) pick(m *snapshot.Model, affinity uint64, exclude []*Upstream) (*Lease, bool) {
	g := p.m.Load().byName[m.Name]
	if g == nil {
		return nil, false
	}
	for range 4 { // a breaker refusing a half-open probe sends us round again
		var u *Upstream
		var anyUsable bool
		switch m.Policy {
		case snapshot.PolicyPrefixAffinity:
			u, anyUsable = p.pickAffinity(g, affinity, exclude)
		case snapshot.PolicyWeightedRandom:
			u, anyUsable = pickWeighted(g.ups, exclude)
		default:
			u, anyUsable = pickP2C(g.ups, exclude)
		}
		if u == nil {
			return nil, anyUsable
		}
		done, err := u.breaker.Load().Allow()
		if err != nil {
			u.inFlight.Add(-1)
			exclude = append(exclude[:len(exclude):len(exclude)], u)
			continue
		}
		return &Lease{U: u, pool: p, done: done}, true
	}
	return nil, true
}

func excluded(u *Upstream, ex []*Upstream) bool {
	for _, e := range ex {
		if e == u {
			return true
		}
	}
	return false
}

// better reports whether a is a better choice than b: fewer in-flight requests per unit
// of weight, then less engine-reported load.
func better(a, b *Upstream) bool {
	// Compare (inA+1)/wA < (inB+1)/wB without division.
	la := (a.inFlight.Load() + 1) * b.weight.Load()
	lb := (b.inFlight.Load() + 1) * a.weight.Load()
	if la != lb {
		return la < lb
	}
	return a.load() < b.load()
}

// pickP2C: two random candidates, the better one wins; if neither has room, the best of
// all with room.
func pickP2C(ups []*Upstream, ex []*Upstream) (*Upstream, bool) {
	n := len(ups)
	if n == 0 {
		return nil, false
	}
	if n >= 2 {
		i := rand.IntN(n)
		j := rand.IntN(n - 1)
		if j >= i {
			j++
		}
		a, b := ups[i], ups[j]
		okA := a.usable() && !excluded(a, ex)
		okB := b.usable() && !excluded(b, ex)
		if okA && okB && better(b, a) {
			a, b = b, a
		}
		if okA || okB {
			if !okA {
				a, okA, b, okB = b, okB, nil, false
			}
			if a.tryAcquire() {
				return a, true
			}
			if okB && b.tryAcquire() {
				return b, true
			}
		}
	}
	// Scan for the best with room.
	var best *Upstream
	anyUsable := false
	for _, u := range ups {
		if !u.usable() || excluded(u, ex) {
			continue
		}
		anyUsable = true
		if u.inFlight.Load() >= u.capacity.Load() {
			continue
		}
		if best == nil || better(u, best) {
			best = u
		}
	}
	for best != nil {
		if best.tryAcquire() {
			return best, true
		}
		// Lost a race for the last slot; rescan once more cheaply.
		var next *Upstream
		for _, u := range ups {
			if u != best && u.usable() && !excluded(u, ex) && u.inFlight.Load() < u.capacity.Load() {
				if next == nil || better(u, next) {
					next = u
				}
			}
		}
		best = next
	}
	return nil, anyUsable
}

func pickWeighted(ups []*Upstream, ex []*Upstream) (*Upstream, bool) {
	var total int64
	anyUsable := false
	for _, u := range ups {
		if u.usable() && !excluded(u, ex) {
			anyUsable = true
			if u.inFlight.Load() < u.capacity.Load() {
				total += u.weight.Load()
			}
		}
	}
	if total <= 0 {
		return nil, anyUsable
	}
	r := rand.Int64N(total)
	for _, u := range ups {
		if u.usable() && !excluded(u, ex) && u.inFlight.Load() < u.capacity.Load() {
			if r -= u.weight.Load(); r < 0 {
				if u.tryAcquire() {
					return u, true
				}
				break
			}
		}
	}
	return pickP2C(ups, ex)
}

const vnodesPer100 = 64 // ring points per 100 units of weight

func buildRing(ups []*Upstream) []ringPoint {
	var ring []ringPoint
	var buf []byte
	for _, u := range ups {
		n := int(u.weight.Load()) * vnodesPer100 / 100
		n = max(n, 1)
		for i := range n {
			buf = append(buf[:0], u.ID...)
			buf = append(buf, '#')
			buf = strconv.AppendInt(buf, int64(i), 10)
			ring = append(ring, ringPoint{h: xxhash.Sum64(buf), u: u})
		}
	}
	sort.Slice(ring, func(i, j int) bool { return ring[i].h < ring[j].h })
	return ring
}

// pickAffinity walks the ring clockwise from the prompt's hash and takes the first usable
// backend whose load stays within the bound; it falls back to P2C.
func (p *Pool) pickAffinity(g *group, key uint64, ex []*Upstream) (*Upstream, bool) {
	if len(g.ring) == 0 || key == 0 {
		return pickP2C(g.ups, ex)
	}
	var total int64
	usable := 0
	for _, u := range g.ups {
		if u.usable() && !excluded(u, ex) {
			total += u.inFlight.Load()
			usable++
		}
	}
	if usable == 0 {
		return nil, false
	}
	bound := int64(p.o.AffinityLoadFactor*float64(total+1)/float64(usable)) + 1
	start := sort.Search(len(g.ring), func(i int) bool { return g.ring[i].h >= key })
	for i := 0; i < len(g.ring); i++ {
		u := g.ring[(start+i)%len(g.ring)].u
		if !u.usable() || excluded(u, ex) || u.inFlight.Load() >= bound {
			continue
		}
		if u.tryAcquire() {
			return u, true
		}
	}
	return pickP2C(g.ups, ex)
}

// AffinityKey hashes a prompt prefix for the prefix-affinity policy (never 0).
func AffinityKey(prefix []byte) uint64 {
	h := xxhash.Sum64(prefix)
	if h == 0 {
		h = 1
	}
	return h
}

// --- fair queue ---

func (p *Pool) wait(ctx context.Context, r Request) (*Lease, error) {
	w := &waiter{model: r.Model, exclude: r.Exclude, ch: make(chan *Lease, 1), start: p.o.Now()}
	p.qmu.Lock()
	if p.o.QueueSize <= 0 || p.queued.Load()+p.awaiting.Load() >= int64(p.o.QueueSize) {
		p.qmu.Unlock()
		p.metrics.queueRejected.WithLabelValues("full").Inc()
		return nil, &apierr.Error{Kind: apierr.Unavailable, Message: "every backend serving " + r.Model.Name + " is at capacity; try again later",
			Code: "backends_busy", RetryAfter: time.Second, Err: ErrQueueFull}
	}
	q := p.users[r.User]
	if q == nil {
		q = &userQueue{}
		p.users[r.User] = q
		p.ring = append(p.ring, r.User)
	}
	q.waiters = append(q.waiters, w)
	p.queued.Add(1)
	p.qmu.Unlock()
	// A slot may have been released between pick and enqueue: hand it out now.
	p.dispatch()

	t := time.NewTimer(p.o.QueueTimeout)
	defer t.Stop()
	var cause error
	select {
	case l := <-w.ch:
		l.Queue = p.o.Now().Sub(w.start)
		p.metrics.queueWait.Observe(l.Queue.Seconds())
		return l, nil
	case <-t.C:
		cause = ErrQueueTimeout
	case <-ctx.Done():
		cause = ctx.Err()
	}
	p.qmu.Lock()
	removed := p.removeLocked(r.User, w)
	p.qmu.Unlock()
	if !removed { // handed a lease just as we gave up: take it (the caller releases it)
		l := <-w.ch
		l.Queue = p.o.Now().Sub(w.start)
		p.metrics.queueWait.Observe(l.Queue.Seconds())
		return l, nil
	}
	p.metrics.queueWait.Observe(p.o.Now().Sub(w.start).Seconds())
	if cause == ErrQueueTimeout {
		p.metrics.queueRejected.WithLabelValues("timeout").Inc()
		return nil, &apierr.Error{Kind: apierr.Unavailable, Message: "every backend serving " + r.Model.Name + " stayed at capacity; try again later",
			Code: "backends_busy", RetryAfter: time.Second, Err: ErrQueueTimeout}
	}
	return nil, &apierr.Error{Kind: apierr.ClientClosed, Message: "request cancelled while queued", Err: cause}
}

func (p *Pool) removeLocked(user int64, w *waiter) bool {
	q := p.users[user]
	if q == nil {
		return false
	}
	for i, x := range q.waiters {
		if x == w {
			q.waiters = append(q.waiters[:i], q.waiters[i+1:]...)
			p.queued.Add(-1)
			if len(q.waiters) == 0 {
				p.dropUserLocked(user)
			}
			return true
		}
	}
	return false
}

func (p *Pool) dropUserLocked(user int64) {
	delete(p.users, user)
	for i, u := range p.ring {
		if u == user {
			p.ring = append(p.ring[:i], p.ring[i+1:]...)
			if p.cursor > i {
				p.cursor--
			}
			break
		}
	}
	if p.cursor >= len(p.ring) {
		p.cursor = 0
	}
}

func (p *Pool) released() {
	if p.queued.Load() > 0 {
		p.dispatch()
	}
}

// dispatch hands free slots to waiters, one per user in round-robin order, so that a
// tenant with many queued requests cannot starve another's.
func (p *Pool) dispatch() {
	if p.queued.Load() == 0 {
		return
	}
	p.qmu.Lock()
	defer p.qmu.Unlock()
	stalled := 0
	for len(p.ring) > 0 && stalled < len(p.ring) {
		if p.cursor >= len(p.ring) {
			p.cursor = 0
		}
		user := p.ring[p.cursor]
		q := p.users[user]
		w := q.waiters[0]
		l, _ := p.pick(w.model, 0, w.exclude)
		if l == nil {
			stalled++
			p.cursor++
			continue
		}
		stalled = 0
		q.waiters = q.waiters[1:]
		p.queued.Add(-1)
		w.ch <- l
		if len(q.waiters) == 0 {
			p.dropUserLocked(user) // the cursor now points at the next user
		} else {
			p.cursor++
		}
	}
}

// QueueDepth is the number of waiting requests: for a slot, or for a backend to serve
// their model (await.go).
func (p *Pool) QueueDepth() int64 { return p.queued.Load() + p.awaiting.Load() }

// --- metrics ---

type poolMetrics struct {
	queueWait     prometheus.Histogram
	queueRejected *prometheus.CounterVec
}

func (pm *poolMetrics) register(p *Pool, r prometheus.Registerer) error {
	pm.queueWait = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "maas_gateway_queue_wait_seconds",
		Help:    "Time requests waited for a backend slot when every backend was full.",
		Buckets: []float64{.001, .005, .01, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
	})
	pm.queueRejected = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "maas_gateway_queue_rejections_total",
		Help: "Requests refused with 503 because every backend stayed full (reason: full, timeout).",
	}, []string{"reason"})
	if r == nil {
		return nil
	}
	for _, c := range []prometheus.Collector{pm.queueWait, pm.queueRejected, &backendCollector{p: p},
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "maas_gateway_queue_depth", Help: "Requests waiting for a backend slot, or for a LoRA adapter loaded on demand."},
			func() float64 { return float64(p.QueueDepth()) })} {
		if err := r.Register(c); err != nil {
			return err
		}
	}
	return nil
}

var (
	descHealthy = prometheus.NewDesc("maas_gateway_backend_healthy",
		"1 when the backend can take requests (healthy, enabled, fresh heartbeat, breaker not open).", []string{"backend"}, nil)
	descBreaker = prometheus.NewDesc("maas_gateway_backend_breaker_state",
		"Circuit breaker state of the backend: 0 closed, 1 half-open, 2 open.", []string{"backend"}, nil)
	descInFlight = prometheus.NewDesc("maas_gateway_backend_in_flight_requests",
		"Requests the gateway has in flight on the backend.", []string{"backend"}, nil)
)

type backendCollector struct{ p *Pool }

func (c *backendCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descHealthy
	ch <- descBreaker
	ch <- descInFlight
}

func (c *backendCollector) Collect(ch chan<- prometheus.Metric) {
	for _, u := range c.p.Upstreams() {
		h := 0.0
		if u.usable() {
			h = 1
		}
		var st float64
		switch u.breaker.Load().State() {
		case gobreaker.StateHalfOpen:
			st = 1
		case gobreaker.StateOpen:
			st = 2
		}
		ch <- prometheus.MustNewConstMetric(descHealthy, prometheus.GaugeValue, h, u.ID)
		ch <- prometheus.MustNewConstMetric(descBreaker, prometheus.GaugeValue, st, u.ID)
		ch <- prometheus.MustNewConstMetric(descInFlight, prometheus.GaugeValue, float64(u.inFlight.Load()), u.ID)
	}
}
