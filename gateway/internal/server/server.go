// Package server runs the gateway process: it is the only place the fasthttp.Server is
// configured, wires the snapshot, the upstream pool, quotas, the proxy and the ledger
// together, and shuts them down in order.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/fasthttp/router"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/valyala/fasthttp"

	"github.com/maas-platform/maas/gateway/internal/admit"
	"github.com/maas-platform/maas/gateway/internal/apidocs"
	"github.com/maas-platform/maas/gateway/internal/ledger"
	"github.com/maas-platform/maas/gateway/internal/panics"
	"github.com/maas-platform/maas/gateway/internal/proxy"
	"github.com/maas-platform/maas/gateway/internal/reqbody"
	"github.com/maas-platform/maas/gateway/internal/snapshot"
	"github.com/maas-platform/maas/gateway/internal/upstream"
	"github.com/maas-platform/maas/pkg/apierr"
	"github.com/maas-platform/maas/pkg/config"
	"github.com/maas-platform/maas/pkg/linger"
	"github.com/maas-platform/maas/pkg/obs"
	"github.com/maas-platform/maas/pkg/pgdb"
)

// Run serves until ctx ends, then shuts down gracefully: stop accepting, let requests and
// streams finish for up to ShutdownGrace, stop the refresh loops, settle quotas, flush the
// ledger.
func Run(ctx context.Context, o Options) error {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	log := o.Logger
	reg := obs.NewRegistry("gateway")
	// One recorder counts every recovered panic: handler, stream writer, admission, ledger.
	rec, err := panics.New(log, reg)
	if err != nil {
		return err
	}

	pool, err := pgdb.Connect(ctx, o.Common.DatabaseURL)
	if err != nil {
		return fmt.Errorf("connect to database: %w", err)
	}
	defer pool.Close()

	ups, err := upstream.New(upstream.Options{
		ConnectTimeout: o.ConnectTimeout, MaxResponseBytes: 64 << 20,
		QueueTimeout: o.QueueTimeout, QueueSize: o.QueueSize,
		BreakerFailures: 3, BreakerOpenFor: 5 * time.Second, BreakerInterval: 10 * time.Second,
		StreamReadTimeout:  max(o.FirstByteTimeout, o.StreamIdleTimeout) + 5*time.Second,
		IdleTimeout:        o.UpstreamIdleTimeout,
		AffinityLoadFactor: 1.25,
		Logger:             log, Registerer: reg, Now: time.Now,
	})
	if err != nil {
		return fmt.Errorf("upstream pool: %w", err)
	}

	so := snapshot.DefaultOptions()
	so.Pool, so.DatabaseURL = pool, o.Common.DatabaseURL
	so.ReloadInterval, so.LoadRefreshInterval = o.ReloadInterval, o.LoadRefreshInterval
	so.KeyLookupRate = o.KeyLookupRate
	so.OnSnapshot, so.OnLoad = ups.Sync, ups.UpdateLoad
	so.Logger, so.Registerer = log, reg
	store, err := snapshot.New(so)
	if err != nil {
		return err
	}

	ao := admit.DefaultOptions()
	ao.RedisURL, ao.Logger, ao.Registerer, ao.BudgetUsed = o.Common.RedisURL, log, reg, budgetUsed(pool)
	if o.QuotaKeyPrefix != "" {
		ao.KeyPrefix = o.QuotaKeyPrefix
	}
	ao.Panics = rec
	ao.RedisTimeout, ao.FailuresToFallback, ao.ProbesToRecover = o.QuotaRedisTimeout, o.QuotaRedisFailures, o.QuotaRedisProbes
	ao.LeaseShare = float64(o.QuotaLeaseSeconds) / 60
	if o.QuotaLeaseSeconds == 0 {
		ao.LeaseShare = -1
	}
	limiter, err := admit.New(ao)
	if err != nil {
		return fmt.Errorf("quota limiter: %w", err)
	}

	if err := os.MkdirAll(o.DataDir, 0o755); err != nil {
		limiter.Close()
		return fmt.Errorf("data directory: %w", err)
	}
	lo := ledger.DefaultOptions()
	lo.DB, lo.DataDir, lo.Batch, lo.FlushInterval, lo.Buffer = pool, o.DataDir, o.LedgerBatch, o.LedgerFlushInterval, o.LedgerBuffer
	lo.Logger, lo.Registerer, lo.Panics = log, reg, rec
	lw, err := ledger.New(lo)
	if err != nil {
		limiter.Close()
		return fmt.Errorf("usage ledger: %w", err)
	}

	// streamCtx ends when the shutdown grace is over: streams still running are cut then.
	streamCtx, cutStreams := context.WithCancel(context.Background())
	defer cutStreams()

	po := proxy.DefaultOptions()
	po.Snapshots, po.Pool = store, ups
	po.Panics = rec
	po.ResponseHeaderTimeout = o.ResponseHeaderTimeout
	po.Quota, po.Ledger = quota{limiter}, lw
	po.ControlURL, po.InternalToken = o.Common.ControlURL, o.Common.InternalToken
	po.AdapterLoadTimeout = o.AdapterLoadTimeout
	po.MaxAttempts, po.FirstByteTimeout, po.StreamIdleTimeout, po.RequestTimeout = o.MaxAttempts, o.FirstByteTimeout, o.StreamIdleTimeout, o.RequestTimeout
	po.BaseContext, po.AccessLog, po.Logger, po.Registerer = streamCtx, o.AccessLog, log, reg
	po.MaxBodyBytes, po.FilesMaxBytes = o.MaxBodyBytes, int64(o.FilesMaxBytes)
	po.Limits = reqbody.Limits{MaxN: int64(o.MaxN), MaxMessages: o.MaxMessages, MaxInputs: o.MaxInputs}
	if o.ForwardHeaders != "" {
		po.ForwardHeaders = strings.Split(o.ForwardHeaders, ",")
	}
	if o.AccessLog {
		// Access-log lines are buffered (flushed every 100 ms and at exit); other logs are not.
		out := newBufferedOut(os.Stderr, 100*time.Millisecond)
		defer out.Close()
		po.AccessLogOut = out
		po.AccessLogJSON = o.Common.Environment == config.Production || o.LogJSON
	}
	ph, err := proxy.New(po)
	if err != nil {
		limiter.Close()
		_ = lw.Stop(context.Background())
		return err
	}

	srv := New(o, Deps{Proxy: ph, Store: store, Registry: reg, Panics: rec})

	loops, stopLoops := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); store.Run(loops) }()

	if o.PprofAddr != "" {
		stopPprof, err := servePprof(o.PprofAddr, log)
		if err != nil {
			stopLoops()
			wg.Wait()
			limiter.Close()
			_ = lw.Stop(context.Background())
			return err
		}
		defer stopPprof()
	}

	ln, err := net.Listen("tcp", o.Addr)
	if err != nil {
		stopLoops()
		wg.Wait()
		limiter.Close()
		_ = lw.Stop(context.Background())
		return fmt.Errorf("listen on %s: %w", o.Addr, err)
	}
	log.Info("gateway listening", "addr", ln.Addr().String())
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(linger.Listen(ln)) }()

	select {
	case <-ctx.Done():
	case err = <-serveErr:
		log.Error("server failed", "err", err)
	}

	// Shutdown, in order: stop accepting and drain, stop loops, settle, flush (LIFO).
	log.Info("shutting down", "grace", o.ShutdownGrace.String())
	graceCtx, cancelGrace := context.WithTimeout(context.Background(), o.ShutdownGrace)
	if sErr := srv.ShutdownWithContext(graceCtx); sErr != nil {
		log.Warn("shutdown grace over; cutting remaining streams", "err", sErr)
		cutStreams()
		// The cut streams end within one read; give their writers a moment to record usage.
		cutCtx, cancelCut := context.WithTimeout(context.Background(), 2*time.Second)
		_ = srv.ShutdownWithContext(cutCtx)
		cancelCut()
	}
	cancelGrace()
	stopLoops()
	wg.Wait()
	if cErr := limiter.Close(); cErr != nil {
		log.Warn("quota limiter close", "err", cErr)
	}
	flushCtx, cancelFlush := context.WithTimeout(context.Background(), 15*time.Second)
	_ = lw.Stop(flushCtx)
	cancelFlush()
	log.Info("gateway stopped", "usage_records_dropped", lw.Dropped())
	if err != nil && !errors.Is(err, net.ErrClosed) {
		return err
	}
	return nil
}

// Deps are the handlers the server routes to.
type Deps struct {
	Proxy    *proxy.Handler
	Store    interface{ Status() (bool, string) }
	Registry *prometheus.Registry
	// Panics counts recovered panics; nil: New registers its own on Registry.
	Panics *panics.Recorder
}

// forwardPaths are forwarded to control as they are.
var forwardPaths = []string{"/api/v1/{path:*}", "/v1/files", "/v1/files/{path:*}", "/v1/fine_tuning/{path:*}",
	"/v1/vector_stores", "/v1/vector_stores/{path:*}", "/v1/apps", "/v1/apps/{path:*}"}

// routes builds the gateway's router.
func routes(d Deps) *router.Router {
	r := router.New()
	r.RedirectTrailingSlash = false
	r.RedirectFixedPath = false
	r.HandleMethodNotAllowed = true
	ph := d.Proxy

	r.GET("/health", func(ctx *fasthttp.RequestCtx) {
		ctx.SetContentType("application/json")
		ctx.SetBodyString(`{"status":"ok"}`)
	})
	r.GET("/ready", func(ctx *fasthttp.RequestCtx) {
		ctx.SetContentType("application/json")
		if ok, why := d.Store.Status(); !ok {
			ctx.SetStatusCode(fasthttp.StatusServiceUnavailable)
			ctx.SetBodyString(`{"status":"degraded","reason":` + quote(why) + `}`)
			return
		}
		ctx.SetBodyString(`{"status":"ready"}`)
	})
	r.GET("/metrics", obs.MetricsHandler(d.Registry))
	r.POST("/v1/chat/completions", ph.ChatCompletions)
	r.POST("/v1/completions", ph.Completions)
	r.POST("/v1/embeddings", ph.Embeddings)
	r.GET("/v1/models", ph.Models)
	r.GET("/v1/models/{model:*}", ph.Model)
	for _, p := range forwardPaths {
		r.ANY(p, ph.Forward)
	}
	apidocs.Register(r)
	r.NotFound = func(ctx *fasthttp.RequestCtx) {
		ph.RequestID(ctx)
		proxy.RefuseUnread(ctx) // the body is not read (the server streams bodies)
		apierr.WriteFast(ctx, apierr.New(apierr.NotFound, "unknown path %s %s", ctx.Method(), truncate(ctx.Path())))
	}
	r.MethodNotAllowed = func(ctx *fasthttp.RequestCtx) {
		ph.RequestID(ctx)
		proxy.RefuseUnread(ctx)
		apierr.WriteFast(ctx, apierr.New(apierr.MethodNotAllowed, "method %s is not allowed on %s", ctx.Method(), truncate(ctx.Path())))
	}
	return r
}

// New returns the configured fasthttp.Server with the gateway's routes.
func New(o Options, d Deps) *fasthttp.Server {
	r := routes(d)
	ph := d.Proxy
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	rec := d.Panics
	if rec == nil {
		var err error
		if rec, err = panics.New(log, d.Registry); err != nil {
			panic(err) // a second registration: a wiring bug
		}
	}
	recovered := recoverer(r.Handler, rec, ph.RequestID)

	return &fasthttp.Server{
		Handler:      recovered,
		Name:         "maas-gateway",
		ReadTimeout:  o.ReadTimeout,
		WriteTimeout: o.WriteTimeout,
		IdleTimeout:  o.IdleTimeout,
		// Request bodies are streamed: the handlers read them. An inference body is read
		// whole at once, bounded by MaxBodyBytes (proxy.requestBody); a forwarded one is
		// passed to control as it arrives, bounded per route (proxy.Forward), so a file
		// upload never sits in the gateway's memory. MaxRequestBodySize is then only how
		// much the server reads ahead with the headers (at most 8 KiB).
		StreamRequestBody:             true,
		DisablePreParseMultipartForm:  true,
		MaxRequestBodySize:            o.MaxBodyBytes,
		ReadBufferSize:                o.MaxHeaderBytes,
		DisableHeaderNamesNormalizing: false,
		NoDefaultServerHeader:         true,
		NoDefaultDate:                 false,
		CloseOnShutdown:               true,
		ReduceMemoryUsage:             false,
		Logger:                        fasthttpLogger{log},
		ErrorHandler: func(ctx *fasthttp.RequestCtx, err error) {
			linger.Mark(ctx.Conn()) // the body is not read: let the client see the answer
			var tooLarge *fasthttp.ErrSmallBuffer
			switch {
			case errors.Is(err, fasthttp.ErrBodyTooLarge):
				apierr.WriteFast(ctx, apierr.New(apierr.TooLarge, "request body is larger than %d bytes", o.MaxBodyBytes))
			case errors.As(err, &tooLarge):
				apierr.WriteFast(ctx, &apierr.Error{Kind: apierr.TooLarge, Message: "request headers are too large"})
				ctx.SetStatusCode(fasthttp.StatusRequestHeaderFieldsTooLarge)
			default:
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					apierr.WriteFast(ctx, &apierr.Error{Kind: apierr.InvalidRequest, Message: "request not received in time"})
					ctx.SetStatusCode(fasthttp.StatusRequestTimeout)
					return
				}
				apierr.WriteFast(ctx, apierr.New(apierr.InvalidRequest, "malformed HTTP request"))
			}
		},
	}
}

// servePprof serves the Go profiler on addr until the returned function is called.
func servePprof(addr string, log *slog.Logger) (func(), error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen for pprof on %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	log.Info("pprof listening", "addr", ln.Addr().String())
	return func() { _ = srv.Close() }, nil
}

// recoverer turns a panic in next into a 500 in the OpenAI shape (never a stack trace to
// the client), logs it with its stack and counts it.
func recoverer(next fasthttp.RequestHandler, rec *panics.Recorder, reqID func(*fasthttp.RequestCtx) string) fasthttp.RequestHandler {
	return func(ctx *fasthttp.RequestCtx) {
		defer func() {
			if v := recover(); v != nil {
				rec.Record(panics.Handler, v, "request_id", reqID(ctx))
				ctx.Response.Reset()
				reqID(ctx)
				apierr.WriteFast(ctx, apierr.New(apierr.Internal, "internal error"))
			}
		}()
		next(ctx)
	}
}

type fasthttpLogger struct{ l *slog.Logger }

// Printf logs fasthttp's messages at debug level. The server streams request bodies, and
// fasthttp warns on every Request.Body of a streamed body: the handlers read bodies whole
// on purpose (bounded, see proxy.requestBody), so that warning is dropped, and nothing is
// formatted when debug logs are off (it would cost an inference request two allocations).
func (f fasthttpLogger) Printf(format string, args ...any) {
	if !f.l.Enabled(context.Background(), slog.LevelDebug) || strings.HasPrefix(format, "WARNING: Request.Body() reads the entire stream") {
		return
	}
	f.l.Debug("fasthttp: " + fmt.Sprintf(format, args...))
}

func truncate(p []byte) string {
	if len(p) > 200 {
		return string(p[:200]) + "…"
	}
	return string(p)
}

func quote(s string) string {
	b := make([]byte, 0, len(s)+2)
	b = append(b, '"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '"' || c == '\\':
			b = append(b, '\\', c)
		case c < 0x20:
			b = append(b, ' ')
		default:
			b = append(b, c)
		}
	}
	return string(append(b, '"'))
}
