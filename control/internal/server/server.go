package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/fasthttp/router"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/valyala/fasthttp"

	"github.com/maas-platform/maas/pkg/apierr"
	"github.com/maas-platform/maas/pkg/apikey"
	"github.com/maas-platform/maas/pkg/internalauth"
	"github.com/maas-platform/maas/pkg/linger"
	"github.com/maas-platform/maas/pkg/obs"
)

// MaxBodySize is the largest request body a route accepts unless its RouteOptions say
// otherwise (413 beyond).
const MaxBodySize = 1 << 20

// Options configures a Server.
type Options struct {
	Addr           string        // listen address, e.g. 127.0.0.1:8001
	InternalToken  string        // MAAS_INTERNAL_TOKEN for /internal routes
	RequestTimeout time.Duration // deadline of each handler's context
	ReadTimeout    time.Duration
	WriteTimeout   time.Duration
	IdleTimeout    time.Duration
	Logger         *slog.Logger
	Registry       *prometheus.Registry // for /metrics; also receives the HTTP metrics
	Auth           Authenticator
	// Ready reports whether the process can serve (GET /ready answers 503 otherwise).
	Ready func(ctx context.Context) error
}

// DefaultOptions returns production defaults.
func DefaultOptions() Options {
	return Options{
		Addr:           "127.0.0.1:8001",
		RequestTimeout: 30 * time.Second,
		ReadTimeout:    30 * time.Second,
		WriteTimeout:   30 * time.Second,
		IdleTimeout:    90 * time.Second,
	}
}

func (o *Options) validate() error {
	switch {
	case o.Logger == nil:
		return errors.New("server: no logger")
	case o.Registry == nil:
		return errors.New("server: no metrics registry")
	case o.Auth == nil:
		return errors.New("server: no authenticator")
	case o.InternalToken == "":
		return errors.New("server: no internal token")
	case o.RequestTimeout <= 0:
		return errors.New("server: request timeout must be positive")
	}
	return nil
}

// Route is one registered endpoint.
type Route struct {
	Method string
	Path   string
	Access Access
}

// RouteOptions widen one route's limits beyond the server's defaults (file uploads and
// downloads). The zero value keeps the defaults.
type RouteOptions struct {
	// MaxBody is the largest request body the route accepts (MaxBodySize when zero).
	MaxBody int64
	// TooLarge is the message of the route's 413 (one naming MaxBody when empty).
	TooLarge string
	// Stream leaves the body unread when the handler starts: the handler reads it with
	// Call.BodyStream, never with PostBody, so a large body is not held in memory.
	Stream bool
	// Timeout replaces the server's RequestTimeout (the handler's context), ReadTimeout
	// (reading the request) and WriteTimeout (writing the response) for this route when
	// positive. Only routes whose path has no wildcard ({name:*}) get the read and write
	// timeouts, which are chosen from the request's header before routing.
	Timeout time.Duration
}

// Call is one request as a handler sees it. It must not be kept after the handler returns.
type Call struct {
	Ctx       context.Context
	RC        *fasthttp.RequestCtx
	Principal *Principal // set on Authenticated and AdminOnly routes

	maxBody  int64
	tooLarge string
	stream   *limitedBody
	timeout  time.Duration // the route's, which bounds Ctx
}

// HandlerFunc handles a call; a returned error is written in the OpenAI error shape.
type HandlerFunc func(c *Call) error

// Server is control's HTTP server. Register routes before Serve; it is safe for concurrent
// use once serving.
type Server struct {
	opts    Options
	log     *slog.Logger
	router  *router.Router
	routes  []Route
	srv     *fasthttp.Server
	metrics *metrics
	now     func() time.Time
	// wide are the routes with RouteOptions.Timeout, looked up by the server's
	// HeaderReceived hook; written only by Handle, before Serve.
	wide []wideRoute
}

// New returns a Server with /health, /ready and /metrics registered.
func New(opts Options) (*Server, error) {
	if err := opts.validate(); err != nil {
		return nil, err
	}
	s := &Server{
		opts:    opts,
		log:     opts.Logger,
		router:  router.New(),
		metrics: newMetrics(opts.Registry),
		now:     time.Now,
	}
	s.router.RedirectTrailingSlash = false
	s.router.RedirectFixedPath = false
	s.router.HandleMethodNotAllowed = true
	s.router.NotFound = func(rc *fasthttp.RequestCtx) {
		s.metrics.observe("unmatched", string(rc.Method()), apierr.NotFound.Status(), 0)
		apierr.WriteFast(rc, apierr.New(apierr.NotFound, "no route for %s %s", rc.Method(), rc.Path()))
	}
	s.router.MethodNotAllowed = func(rc *fasthttp.RequestCtx) {
		s.metrics.observe("unmatched", string(rc.Method()), apierr.MethodNotAllowed.Status(), 0)
		apierr.WriteFast(rc, apierr.New(apierr.MethodNotAllowed, "method %s not allowed on %s", rc.Method(), rc.Path()))
	}
	s.router.PanicHandler = func(rc *fasthttp.RequestCtx, v any) {
		s.log.Error("handler panic", "path", string(rc.Path()), "panic", fmt.Sprint(v))
		apierr.WriteFast(rc, apierr.New(apierr.Internal, "internal error"))
	}

	s.Handle("GET", "/health", Public, func(c *Call) error {
		return c.JSON(200, map[string]string{"status": "ok", "version": obs.Version})
	})
	s.Handle("GET", "/ready", Public, func(c *Call) error {
		if s.opts.Ready != nil {
			if err := s.opts.Ready(c.Ctx); err != nil {
				return &apierr.Error{Kind: apierr.Unavailable, Message: "not ready: database unreachable", Err: err}
			}
		}
		return c.JSON(200, map[string]string{"status": "ready"})
	})
	metricsHandler := obs.MetricsHandler(opts.Registry)
	s.router.GET("/metrics", metricsHandler)
	s.routes = append(s.routes, Route{"GET", "/metrics", Public})

	s.srv = &fasthttp.Server{
		Name:         "maas-control",
		Handler:      s.router.Handler,
		ReadTimeout:  opts.ReadTimeout,
		WriteTimeout: opts.WriteTimeout,
		IdleTimeout:  opts.IdleTimeout,
		// Bodies are streamed: each route reads its own up to its own limit (Handle), so a
		// file upload does not sit in memory and a 1 MiB route still answers 413 past 1 MiB.
		MaxRequestBodySize:            MaxBodySize,
		StreamRequestBody:             true,
		DisablePreParseMultipartForm:  true,
		HeaderReceived:                s.headerReceived,
		ReadBufferSize:                16 << 10, // also the header size limit
		DisableHeaderNamesNormalizing: false,
		NoDefaultServerHeader:         true,
		CloseOnShutdown:               true,
		ErrorHandler: func(rc *fasthttp.RequestCtx, err error) {
			linger.Mark(rc.Conn()) // the body is not read: let the client see the answer
			if errors.Is(err, fasthttp.ErrBodyTooLarge) {
				apierr.WriteFast(rc, apierr.New(apierr.TooLarge, "request body is larger than %d bytes", MaxBodySize))
				return
			}
			apierr.WriteFast(rc, apierr.New(apierr.InvalidRequest, "malformed HTTP request"))
		},
		Logger: fasthttpLogger{s.log},
	}
	return s, nil
}

type fasthttpLogger struct{ l *slog.Logger }

func (f fasthttpLogger) Printf(format string, args ...any) {
	f.l.Debug("fasthttp", "msg", fmt.Sprintf(format, args...))
}

// Routes lists every registered route (for tests and docs).
func (s *Server) Routes() []Route { return append([]Route(nil), s.routes...) }

// RouterList is the router's own view of registered routes: method → paths.
func (s *Server) RouterList() map[string][]string { return s.router.List() }

// Handler is the top-level fasthttp handler (for in-process tests).
func (s *Server) Handler() fasthttp.RequestHandler { return s.srv.Handler }

// Handle registers h for method and path with the given access and the default limits.
func (s *Server) Handle(method, path string, access Access, h HandlerFunc) {
	s.HandleWith(method, path, access, RouteOptions{}, h)
}

// HandleWith registers h for method and path with the given access and limits.
func (s *Server) HandleWith(method, path string, access Access, ro RouteOptions, h HandlerFunc) {
	s.routes = append(s.routes, Route{Method: method, Path: path, Access: access})
	if ro.MaxBody <= 0 {
		ro.MaxBody = MaxBodySize
	}
	timeout := s.opts.RequestTimeout
	if ro.Timeout > 0 {
		timeout = ro.Timeout
		if !strings.Contains(path, ":*}") {
			s.wide = append(s.wide, wideRoute{method: method, segs: strings.Split(path, "/"), timeout: ro.Timeout})
		}
	}
	s.router.Handle(method, path, func(rc *fasthttp.RequestCtx) {
		start := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		c := &Call{Ctx: ctx, RC: rc, maxBody: ro.MaxBody, tooLarge: ro.TooLarge, timeout: timeout}
		err := c.readBody(ro.Stream)
		if err == nil {
			err = s.admit(c, path, access)
		}
		if err == nil {
			err = h(c)
		}
		if err != nil && c.unreadBody() {
			// The client may still be sending: close after the answer, lingering so that
			// it reads the answer instead of a reset.
			linger.Mark(rc.Conn())
			rc.SetConnectionClose()
		}
		if err != nil {
			e := apierr.WriteFast(rc, err)
			if e.Kind == apierr.Internal {
				s.log.Error("request failed", "method", method, "route", path, "err", e.Err)
			} else if e.Err != nil {
				s.log.Debug("request rejected", "method", method, "route", path, "status", e.Kind.Status(), "err", e.Err)
			}
		}
		s.metrics.observe(path, method, rc.Response.StatusCode(), time.Since(start))
	})
}

func (s *Server) admit(c *Call, path string, access Access) error {
	switch access {
	case Public:
		return nil
	case Internal:
		if !internalauth.CheckBearer(string(c.RC.Request.Header.Peek("Authorization")), s.opts.InternalToken) {
			return apierr.New(apierr.Unauthenticated, "internal endpoint: missing or wrong internal token")
		}
		return nil
	}
	p, err := s.opts.Auth.Authenticate(c.Ctx, &c.RC.Request)
	if err != nil {
		return err
	}
	c.Principal = p
	if need := apikey.ScopeFor(path); !p.Scopes.Has(need) {
		return &apierr.Error{Kind: apierr.PermissionDenied, Code: "insufficient_scope", Message: apikey.ScopeError(need)}
	}
	if access == AdminOnly && !p.IsAdmin() {
		return apierr.New(apierr.PermissionDenied, "this endpoint needs the admin role")
	}
	return nil
}

// Serve listens on Options.Addr and serves until ctx ends, then shuts down gracefully
// within grace. The listening address is sent on ready (if non-nil) once bound.
func (s *Server) Serve(ctx context.Context, grace time.Duration, ready func(addr string)) error {
	ln, err := net.Listen("tcp", s.opts.Addr)
	if err != nil {
		return fmt.Errorf("listen %s: %w", s.opts.Addr, err)
	}
	if ready != nil {
		ready(ln.Addr().String())
	}
	errc := make(chan error, 1)
	go func() { errc <- s.srv.Serve(linger.Listen(ln)) }()
	select {
	case err := <-errc:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	if err := s.srv.ShutdownWithContext(sctx); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	return <-errc
}

// JSON writes v with status.
func (c *Call) JSON(status int, v any) error {
	b, err := marshal(v)
	if err != nil {
		return apierr.Wrap(err, "encode response")
	}
	c.RC.SetStatusCode(status)
	c.RC.Response.Header.SetContentType("application/json")
	c.RC.SetBody(b)
	return nil
}

// NoContent answers 204.
func (c *Call) NoContent() error {
	c.RC.SetStatusCode(fasthttp.StatusNoContent)
	return nil
}

// Param returns the router parameter name as a string.
func (c *Call) Param(name string) string {
	v := c.RC.UserValue(name)
	s, _ := v.(string)
	return s
}

// IDParam parses the router parameter name as a positive integer id (404 otherwise: an id
// that cannot exist names nothing).
func (c *Call) IDParam(name string) (int64, error) {
	id, err := strconv.ParseInt(c.Param(name), 10, 64)
	if err != nil || id <= 0 {
		return 0, apierr.New(apierr.NotFound, "%s %q not found", name, c.Param(name))
	}
	return id, nil
}
