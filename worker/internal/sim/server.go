package sim

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/maas-platform/maas/pkg/apierr"
	"github.com/maas-platform/maas/pkg/obs"
)

// OwnedBy is the owned_by of every model the simulator lists.
const OwnedBy = "maas-simulator"

// Sim is a running simulator. It is safe for concurrent use. Build it with New, start it
// with Listen and Serve (or Run), stop it with Stop.
type Sim struct {
	o       Options
	log     *slog.Logger
	srv     *fasthttp.Server
	metrics fasthttp.RequestHandler
	m       *metrics

	models atomic.Pointer[modelTable]
	loraMu sync.Mutex // serialises LoRA table updates (copy on write)

	slots    chan struct{} // running slots; nil = no limit
	running  atomic.Int64
	waiting  atomic.Int64
	kvTokens atomic.Int64

	stopping chan struct{}
	stopOnce sync.Once
	// unstall releases stalled requests (closed first thing in Stop: the server's
	// shutdown waits for their connections).
	unstall     chan struct{}
	unstallOnce sync.Once
	hijackMu    sync.Mutex
	hijacked    map[net.Conn]bool // hijacked connections; true for hung requests

	lnMu sync.Mutex
	ln   net.Listener

	idPrefix string
	idSeq    atomic.Uint64
	created  int64
	// fingerprint is Options.SystemFingerprint as a JSON string; nil when not set.
	fingerprint []byte
}

// model is one served model (a base model or a LoRA adapter).
type model struct {
	name      string
	quoted    []byte // the name as a JSON string
	embedding bool
	parent    string // base model of a LoRA adapter
	root      string // the adapter's path, or the model's name
	created   int64
	mm        *modelMetrics
}

// modelTable is immutable once published; LoRA changes publish a copy.
type modelTable struct {
	byName map[string]*model
	order  []*model
}

// New builds a simulator; it does not listen yet.
func New(o Options) (*Sim, error) {
	if err := o.validate(); err != nil {
		return nil, err
	}
	var idb [4]byte
	_, _ = rand.Read(idb[:])
	s := &Sim{
		o:        o,
		log:      o.Logger.With("engine", "simulator"),
		stopping: make(chan struct{}),
		unstall:  make(chan struct{}),
		hijacked: map[net.Conn]bool{},
		idPrefix: hex.EncodeToString(idb[:]),
		created:  time.Now().Unix(),
	}
	if o.MaxConcurrency > 0 {
		s.slots = make(chan struct{}, o.MaxConcurrency)
	}
	if o.SystemFingerprint != "" {
		s.fingerprint = appendJSONString(nil, o.SystemFingerprint)
	}
	reg := obs.NewRegistry("sim")
	primary := ""
	if len(o.ChatModels) > 0 {
		primary = o.ChatModels[0]
	} else {
		primary = o.EmbeddingModels[0]
	}
	s.m = newMetrics(reg, s, primary)
	s.metrics = obs.MetricsHandler(reg)
	t := &modelTable{byName: map[string]*model{}}
	for _, name := range o.ChatModels {
		t.add(s.newModel(name, false, "", name))
	}
	for _, name := range o.EmbeddingModels {
		t.add(s.newModel(name, true, "", name))
	}
	s.models.Store(t)
	s.srv = &fasthttp.Server{
		Handler:              s.handle,
		Name:                 "maas-simulator",
		NoDefaultDate:        true,
		NoDefaultContentType: true,
		MaxRequestBodySize:   32 << 20,
		IdleTimeout:          o.IdleTimeout, // vLLM's (uvicorn's) keep-alive timeout
		ReadTimeout:          5 * time.Minute,
		CloseOnShutdown:      true,
		TCPKeepalive:         true,
		ReadBufferSize:       16 << 10,
		ContinueHandler:      s.stallOrContinue,
	}
	return s, nil
}

func (s *Sim) newModel(name string, embedding bool, parent, root string) *model {
	return &model{
		name: name, quoted: appendJSONString(nil, name), embedding: embedding,
		parent: parent, root: root, created: time.Now().Unix(), mm: s.m.forModel(name),
	}
}

func (t *modelTable) add(m *model) {
	t.byName[m.name] = m
	t.order = append(t.order, m)
}

// Listen opens the listening socket on Options.Addr ("127.0.0.1:0" picks a free port).
func (s *Sim) Listen() error {
	ln, err := net.Listen("tcp", s.o.Addr)
	if err != nil {
		return fmt.Errorf("simulator listen %s: %w", s.o.Addr, err)
	}
	s.lnMu.Lock()
	s.ln = ln
	s.lnMu.Unlock()
	return nil
}

// Addr is the address the simulator listens on (after Listen).
func (s *Sim) Addr() string {
	s.lnMu.Lock()
	defer s.lnMu.Unlock()
	if s.ln == nil {
		return s.o.Addr
	}
	return s.ln.Addr().String()
}

// URL is the simulator's base URL (without /v1).
func (s *Sim) URL() string { return "http://" + s.Addr() }

// Serve serves until Stop; it calls Listen first when needed.
func (s *Sim) Serve() error {
	s.lnMu.Lock()
	ln := s.ln
	s.lnMu.Unlock()
	if ln == nil {
		if err := s.Listen(); err != nil {
			return err
		}
		ln = s.ln
	}
	s.log.Info("simulator engine serving (not a real model)", "addr", ln.Addr().String(),
		"chat_models", s.o.ChatModels, "embedding_models", s.o.EmbeddingModels,
		"ttft", s.o.TTFT, "itl", s.o.ITL, "max_concurrency", s.o.MaxConcurrency, "fail", s.o.Fail.String())
	if err := s.srv.Serve(ln); err != nil {
		return fmt.Errorf("simulator serve: %w", err)
	}
	return nil
}

// Stop stops accepting, lets running requests finish until ctx ends, then aborts the rest
// (hung requests included). It is idempotent.
func (s *Sim) Stop(ctx context.Context) error {
	s.unstallOnce.Do(func() { close(s.unstall) })
	s.closeHijacked(true) // hung requests would only hold the shutdown up
	err := s.srv.ShutdownWithContext(ctx)
	s.stopOnce.Do(func() { close(s.stopping) })
	s.closeHijacked(false)
	if err != nil && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("simulator stop: %w", err)
	}
	return nil
}

// closeHijacked closes the hijacked connections (only the hung ones when hungOnly).
func (s *Sim) closeHijacked(hungOnly bool) {
	s.hijackMu.Lock()
	defer s.hijackMu.Unlock()
	for c, hung := range s.hijacked {
		if hung || !hungOnly {
			_ = c.Close()
		}
	}
}

// Run serves until ctx ends, then stops with grace for running requests.
func (s *Sim) Run(ctx context.Context, grace time.Duration) error {
	if s.Addr() == s.o.Addr {
		if err := s.Listen(); err != nil {
			return err
		}
	}
	errc := make(chan error, 1)
	go func() { errc <- s.Serve() }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	err := s.Stop(sctx)
	<-errc
	return err
}

// Load is the simulator's current load.
type Load struct {
	Running, Waiting int
	KVCacheUsage     float64
}

// Load returns the running and waiting requests and the KV-cache usage estimate.
func (s *Sim) Load() Load {
	return Load{Running: int(s.running.Load()), Waiting: int(s.waiting.Load()), KVCacheUsage: s.kvUsage()}
}

// Capacity is the number of requests that run at once (0 = no limit).
func (s *Sim) Capacity() int { return s.o.MaxConcurrency }

// Models returns the names of the served models, LoRA adapters included.
func (s *Sim) Models() []string {
	t := s.models.Load()
	out := make([]string, len(t.order))
	for i, m := range t.order {
		out[i] = m.name
	}
	return out
}

func (s *Sim) kvUsage() float64 {
	u := float64(s.kvTokens.Load()) / float64(s.o.KVCacheTokens)
	if u > 1 {
		return 1
	}
	return u
}

// admit takes a running slot, waiting in the queue when all are taken. It fails when the
// queue is full or the simulator stops.
func (s *Sim) admit(tokens int64) error {
	if s.slots != nil {
		select {
		case s.slots <- struct{}{}:
		default:
			if n := s.waiting.Add(1); s.o.MaxQueue > 0 && n > int64(s.o.MaxQueue) {
				s.waiting.Add(-1)
				return errQueueFull
			}
			select {
			case s.slots <- struct{}{}:
				s.waiting.Add(-1)
			case <-s.stopping:
				s.waiting.Add(-1)
				return errStopping
			}
		}
	}
	s.running.Add(1)
	s.kvTokens.Add(tokens)
	return nil
}

func (s *Sim) release(tokens int64) {
	s.kvTokens.Add(-tokens)
	s.running.Add(-1)
	if s.slots != nil {
		<-s.slots
	}
}

var errStopping = errors.New("sim: stopping")

// sleep waits d unless the simulator stops first; t is reused across calls (may be nil).
func (s *Sim) sleep(t **time.Timer, d time.Duration) bool {
	if d <= 0 {
		return true
	}
	if *t == nil {
		*t = time.NewTimer(d)
	} else {
		(*t).Reset(d)
	}
	select {
	case <-(*t).C:
		return true
	case <-s.stopping:
		return false
	}
}

// sleepUnlessGone is sleep that also ends when gone is closed (nil: never): done is true
// when d has passed, left when gone closed first.
func (s *Sim) sleepUnlessGone(t **time.Timer, d time.Duration, gone <-chan struct{}) (done, left bool) {
	if gone == nil {
		return s.sleep(t, d), false
	}
	if *t == nil {
		*t = time.NewTimer(d)
	} else {
		(*t).Reset(d)
	}
	select {
	case <-(*t).C:
		return true, false
	case <-gone:
		return false, true
	case <-s.stopping:
		return false, false
	}
}

// itl returns one inter-token gap.
func (s *Sim) itl() time.Duration {
	d := s.o.ITL
	if j := s.o.ITLJitter; j > 0 {
		d += time.Duration(mrand.Int64N(int64(2*j)+1)) - j
	}
	if d < 0 {
		return 0
	}
	return d
}

// failureFor returns the failure to inject into a request: its header (only when
// FailHeaderEnabled; otherwise the header is ignored, not even parsed), else the
// configured one for a FailRate share of requests.
func (s *Sim) failureFor(ctx *fasthttp.RequestCtx) (Failure, error) {
	f, err := s.failureOf(&ctx.Request.Header)
	if f.Stall && ctx.Request.MayContinue() {
		// Decided when the headers arrived (stallOrContinue): this request was let through.
		f.Stall = false
	}
	if f.Stall {
		f.Stall, f.Hang = false, true // the body has been read: all that is left is to hang
	}
	return f, err
}

func (s *Sim) failureOf(h *fasthttp.RequestHeader) (Failure, error) {
	if v := h.Peek(FailHeader); len(v) > 0 && s.o.FailHeaderEnabled {
		f, err := ParseFailure(string(v))
		if err != nil {
			return Failure{}, apierr.Param("", "invalid %s header: %v", FailHeader, err)
		}
		return f, nil
	}
	if s.o.Fail.IsZero() || (s.o.FailRate < 1 && mrand.Float64() >= s.o.FailRate) {
		return Failure{}, nil
	}
	return s.o.Fail, nil
}

// stallOrContinue is the server's ContinueHandler: for a request with Expect: 100-continue
// that gets the stall failure it neither sends "100 Continue" nor reads the body, and holds
// the connection until the simulator stops; every other request continues.
func (s *Sim) stallOrContinue(h *fasthttp.RequestHeader) bool {
	f, err := s.failureOf(h)
	if err != nil || !f.Stall {
		return true
	}
	s.m.failures.WithLabelValues(f.mode()).Inc()
	<-s.unstall
	return false
}

func (s *Sim) handle(ctx *fasthttp.RequestCtx) {
	path := ctx.Path()
	method := ctx.Method()
	post := string(method) == fasthttp.MethodPost
	get := string(method) == fasthttp.MethodGet || string(method) == fasthttp.MethodHead
	switch string(path) {
	case "/v1/chat/completions":
		if post {
			s.chat(ctx)
			return
		}
	case "/v1/completions":
		if post {
			s.completions(ctx)
			return
		}
	case "/v1/embeddings":
		if post {
			s.embeddings(ctx)
			return
		}
	case "/v1/models":
		if get {
			s.listModels(ctx)
			return
		}
	case "/health", "/ping":
		if get {
			ctx.SetStatusCode(fasthttp.StatusOK)
			return
		}
	case "/metrics":
		if get {
			s.metrics(ctx)
			return
		}
	case "/v1/load_lora_adapter":
		if !s.o.RuntimeLoRAUpdating {
			notFoundRoute(ctx)
			return
		}
		if post {
			s.loadLoRA(ctx)
			return
		}
	case "/v1/unload_lora_adapter":
		if !s.o.RuntimeLoRAUpdating {
			notFoundRoute(ctx)
			return
		}
		if post {
			s.unloadLoRA(ctx)
			return
		}
	default:
		if len(path) > len("/v1/models/") && string(path[:len("/v1/models/")]) == "/v1/models/" && get {
			s.getModel(ctx, string(path[len("/v1/models/"):]))
			return
		}
		apierr.WriteFast(ctx, apierr.New(apierr.NotFound, "no route for %s", path))
		return
	}
	apierr.WriteFast(ctx, apierr.New(apierr.MethodNotAllowed, "method %s not allowed on %s", method, path))
}

// hijack takes over the connection after the handler returns, without a response; fn
// owns the connection until it returns (the server then closes it).
func (s *Sim) hijack(ctx *fasthttp.RequestCtx, fn func(c net.Conn), hung bool) {
	ctx.HijackSetNoResponse(true)
	ctx.Hijack(func(c net.Conn) {
		// fasthttp's wrapper ignores Close (it closes the connection itself after fn);
		// Stop needs the real connection to cut hung requests.
		raw := c
		if u, ok := c.(interface{ UnsafeConn() net.Conn }); ok {
			raw = u.UnsafeConn()
		}
		s.hijackMu.Lock()
		select {
		case <-s.stopping:
			s.hijackMu.Unlock()
			return
		default:
		}
		s.hijacked[raw] = hung
		s.hijackMu.Unlock()
		defer func() {
			s.hijackMu.Lock()
			delete(s.hijacked, raw)
			s.hijackMu.Unlock()
		}()
		fn(c)
	})
}

// hang keeps the connection open, answering nothing, until the client closes it or the
// simulator stops.
func (s *Sim) hang(ctx *fasthttp.RequestCtx) {
	s.hijack(ctx, func(c net.Conn) {
		var buf [512]byte
		for {
			if _, err := c.Read(buf[:]); err != nil {
				return
			}
		}
	}, true)
}

func (s *Sim) nextID(dst []byte, prefix string) []byte {
	dst = append(dst, prefix...)
	dst = append(dst, s.idPrefix...)
	return appendHex(dst, s.idSeq.Add(1))
}

func appendHex(dst []byte, v uint64) []byte {
	const digits = "0123456789abcdef"
	var b [16]byte
	for i := 15; i >= 0; i-- {
		b[i] = digits[v&15]
		v >>= 4
	}
	return append(dst, b[:]...)
}

// injectLeading applies the parts of the request's failure that act before any answer (slow
// first byte, error status, hang) and returns the failure for the rest. answered is true when
// it has already written the response. timer is the request's reusable sleep timer.
func (s *Sim) injectLeading(ctx *fasthttp.RequestCtx, timer **time.Timer) (f Failure, answered bool) {
	f, err := s.failureFor(ctx)
	if err != nil {
		apierr.WriteFast(ctx, err)
		return f, true
	}
	if f.IsZero() {
		return f, false
	}
	s.m.failures.WithLabelValues(f.mode()).Inc()
	if !s.sleep(timer, f.SlowFirstByte) {
		apierr.WriteFast(ctx, apierr.New(apierr.Unavailable, "simulator is stopping"))
		return f, true
	}
	if f.Status != 0 {
		writeInjectedStatus(ctx, f.Status)
		return f, true
	}
	if f.Hang {
		s.hang(ctx)
		return f, true
	}
	return f, false
}

// admitOrRefuse takes tokens worth of the simulated engine's capacity, or answers 503 (queue
// full, with Retry-After; or stopping) and returns false.
func (s *Sim) admitOrRefuse(ctx *fasthttp.RequestCtx, tokens int64) bool {
	err := s.admit(tokens)
	if err == nil {
		return true
	}
	e := apierr.New(apierr.Unavailable, "the simulator is overloaded: waiting queue full")
	e.RetryAfter = time.Second
	if errors.Is(err, errStopping) {
		e.Message = "simulator is stopping"
	}
	apierr.WriteFast(ctx, e)
	return false
}
