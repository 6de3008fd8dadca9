package proxy

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/maas-platform/maas/gateway/internal/ledger"
	"github.com/maas-platform/maas/gateway/internal/panics"
	"github.com/maas-platform/maas/gateway/internal/reqbody"
	"github.com/maas-platform/maas/gateway/internal/snapshot"
	"github.com/maas-platform/maas/gateway/internal/upstream"
	"github.com/maas-platform/maas/pkg/apierr"
	"github.com/maas-platform/maas/pkg/apikey"
	"github.com/prometheus/client_golang/prometheus"
)

// Quota admits requests against the key's and the user's limits.
type Quota interface {
	// Admit reserves tokens for a request by k; it returns an *apierr.Error (429) when a
	// limit is reached.
	Admit(ctx context.Context, k *snapshot.Key, tokens int64) (Ticket, error)
}

// Ticket is an admitted request's reservation.
type Ticket interface {
	// Settle ends the request with the tokens it actually used.
	Settle(actualTokens int64)
}

// Snapshots gives the current snapshot.
type Snapshots interface {
	Current() *snapshot.Snapshot
}

// Recorder receives usage records.
type Recorder interface {
	Add(ledger.Record)
}

// Options configures a Handler.
type Options struct {
	Snapshots Snapshots
	Pool      *upstream.Pool
	Quota     Quota    // nil: no quotas
	Ledger    Recorder // nil: no usage records
	// ControlURL and InternalToken: where and how control-plane paths are forwarded.
	ControlURL    string
	InternalToken string
	// AdapterLoadTimeout bounds how long a request for a LoRA adapter that no backend
	// serves waits for one to load it (control's demand hook, then a snapshot showing it);
	// never beyond the request's own deadline. 503 with Retry-After past it.
	AdapterLoadTimeout time.Duration
	// Adapters is the demand hook (nil: control's, at ControlURL, with InternalToken; none
	// without ControlURL, and a request for an adapter loaded nowhere fails at once).
	Adapters AdapterHook

	// ForwardHeaders are client headers passed to backends besides X-Request-Id (ours),
	// traceparent and tracestate; every other client header is dropped.
	ForwardHeaders []string

	// MaxBodyBytes bounds an inference request's body, and a forwarded request's other
	// than a file upload: 413 beyond (0: no bound).
	MaxBodyBytes int
	// FilesMaxBytes bounds the file of an upload forwarded to control (POST /v1/files);
	// the multipart framing may add 1 MiB.
	FilesMaxBytes int64

	MaxAttempts       int
	FirstByteTimeout  time.Duration
	StreamIdleTimeout time.Duration
	RequestTimeout    time.Duration
	// ResponseHeaderTimeout, when positive, bounds the wait of a non-streamed request for
	// its final response headers (engines send them when the whole answer is ready, so it
	// must exceed the longest non-streamed generation); 0: only RequestTimeout bounds it.
	// FirstByteTimeout bounds the wait for the backend's first byte, "100 Continue"
	// included (roundtrip.go).
	ResponseHeaderTimeout time.Duration
	// MaxEventBytes bounds one SSE event from a backend.
	MaxEventBytes int
	// Limits bound what one request may ask for (n, messages, embeddings inputs); a
	// request past one gets a 400 naming the field.
	Limits reqbody.Limits

	// BaseContext ends when streams must stop (shutdown grace over).
	BaseContext context.Context
	AccessLog   bool
	// AccessLogOut receives the access log lines (nil: stderr); AccessLogJSON selects JSON
	// lines instead of logfmt text.
	AccessLogOut  io.Writer
	AccessLogJSON bool
	Logger        *slog.Logger
	Registerer    prometheus.Registerer
	// Panics records panics recovered in a request's life (nil: not recorded, still
	// recovered).
	Panics *panics.Recorder
	Now    func() time.Time
}

// DefaultOptions returns the defaults.
func DefaultOptions() Options {
	return Options{
		MaxBodyBytes:       10 << 20,
		FilesMaxBytes:      512 << 20,
		MaxAttempts:        3,
		FirstByteTimeout:   60 * time.Second,
		StreamIdleTimeout:  60 * time.Second,
		RequestTimeout:     10 * time.Minute,
		AdapterLoadTimeout: 30 * time.Second,
		MaxEventBytes:      4 << 20,
		Limits:             reqbody.DefaultLimits(),
		AccessLog:          true,
		Now:                time.Now,
	}
}

// Handler serves the OpenAI API. Safe for concurrent use.
type Handler struct {
	o       Options
	m       *metrics
	control *controlClient
	demands demands // LoRA adapters loaded on demand (ondemand.go)
	idBase  string
	idSeq   atomic.Uint64
	forward []string // client headers passed to backends
	// noContinue holds the backends (*upstream.Upstream) seen answering a non-streamed
	// request without "100 Continue": they get no first-byte bound (roundtrip.go).
	noContinue sync.Map
	// testHook, when set by a test, runs at named points of a request (a panic injector).
	testHook func(where string)
	calls    sync.Pool
	access   *accessLog
}

// New returns a Handler.
func New(o Options) (*Handler, error) {
	if o.Snapshots == nil || o.Pool == nil {
		return nil, errors.New("proxy: Snapshots and Pool are required")
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.AccessLogOut == nil {
		o.AccessLogOut = os.Stderr
	}
	if o.BaseContext == nil {
		o.BaseContext = context.Background()
	}
	if o.MaxAttempts <= 0 {
		o.MaxAttempts = 1
	}
	if o.MaxEventBytes <= 0 {
		o.MaxEventBytes = 4 << 20
	}
	forward := append([]string(nil), defaultForward...)
	for _, name := range o.ForwardHeaders {
		if name = strings.TrimSpace(name); name == "" {
			continue
		}
		if !forwardable(name) {
			return nil, fmt.Errorf("proxy: header %q cannot be forwarded to backends", name)
		}
		forward = append(forward, name)
	}
	m, err := newMetrics(o.Registerer)
	if err != nil {
		return nil, err
	}
	// 64 random bits: two gateway processes (or one, restarted) share a prefix with a
	// probability of about n²/2⁶⁵ for n processes ever started.
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, fmt.Errorf("proxy: request id prefix: %w", err)
	}
	h := &Handler{o: o, m: m, forward: forward, idBase: "req-" + hex.EncodeToString(b[:]) + "-", access: newAccessLog(o.AccessLogOut, o.AccessLogJSON)}
	h.calls.New = func() any { return &call{} }
	if o.ControlURL != "" {
		if h.control, err = newControlClient(o.ControlURL, o.RequestTimeout); err != nil {
			return nil, err
		}
	}
	h.demands = demands{hook: o.Adapters, now: o.Now}
	if o.Adapters == nil && h.control != nil {
		h.demands.hook = controlHook{c: h.control, token: o.InternalToken}
	}
	if h.o.AdapterLoadTimeout <= 0 {
		h.o.AdapterLoadTimeout = 30 * time.Second
	}
	return h, nil
}

// Endpoint kinds.
type endpoint uint8

const (
	epChat endpoint = iota
	epCompletions
	epEmbeddings
)

var endpointPaths = [...]string{epChat: "/v1/chat/completions", epCompletions: "/v1/completions", epEmbeddings: "/v1/embeddings"}

// ChatCompletions serves POST /v1/chat/completions.
func (h *Handler) ChatCompletions(ctx *fasthttp.RequestCtx) { h.serve(ctx, epChat) }

// Completions serves POST /v1/completions.
func (h *Handler) Completions(ctx *fasthttp.RequestCtx) { h.serve(ctx, epCompletions) }

// Embeddings serves POST /v1/embeddings.
func (h *Handler) Embeddings(ctx *fasthttp.RequestCtx) { h.serve(ctx, epEmbeddings) }

// RequestID returns the request's id, generated by the gateway and unique across
// gateway processes and restarts (a random per-process prefix and a sequence): the usage
// ledger's key. It is set on the response as X-Request-Id and sent to backends. A client's
// own X-Request-Id never replaces it; see ClientRequestID.
func (h *Handler) RequestID(ctx *fasthttp.RequestCtx) string {
	if v := ctx.UserValue(reqIDKey); v != nil {
		switch v := v.(type) {
		case string:
			return v
		case *call:
			return v.reqID
		}
	}
	id := h.newRequestID(ctx)
	ctx.SetUserValue(reqIDKey, id)
	return id
}

// newRequestID makes a request id and sets it on the response.
func (h *Handler) newRequestID(ctx *fasthttp.RequestCtx) string {
	var buf [48]byte
	b := append(buf[:0], h.idBase...)
	b = strconv.AppendUint(b, h.idSeq.Add(1), 36)
	id := string(b)
	ctx.Response.Header.Set("X-Request-Id", id)
	return id
}

// ClientRequestID returns the client's X-Request-Id when it is sane (printable ASCII, at
// most 128 bytes), else "". It is kept in the usage record and the access log, beside the
// gateway's own id; it does not reach backends.
func ClientRequestID(ctx *fasthttp.RequestCtx) string {
	if in := ctx.Request.Header.Peek("X-Request-Id"); len(in) > 0 && len(in) <= 128 && printable(in) {
		return string(in)
	}
	return ""
}

type ctxKey struct{}

var reqIDKey = ctxKey{}

func printable(b []byte) bool {
	for _, c := range b {
		if c < 0x21 || c > 0x7e {
			return false
		}
	}
	return true
}

func equalFoldASCII(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range b {
		c, d := b[i], s[i]
		if c|0x20 != d|0x20 {
			return false
		}
	}
	return true
}

func isAPIKey(tok []byte) bool { return len(tok) > 3 && string(tok[:3]) == apikey.Prefix }

// modelEntry is one model in OpenAI's shape.
type modelEntry struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Created int64  `json:"created"`
	OwnedBy string `json:"owned_by"`
}

func entryOf(m *snapshot.Model) modelEntry {
	return modelEntry{ID: m.Name, Object: "model", Created: m.Created, OwnedBy: "maas"}
}

// Models serves GET /v1/models: the models the key may use, in OpenAI's list shape.
func (h *Handler) Models(ctx *fasthttp.RequestCtx) {
	snap, k, ok := h.authenticated(ctx)
	if !ok {
		return
	}
	out := struct {
		Object string       `json:"object"`
		Data   []modelEntry `json:"data"`
	}{Object: "list", Data: []modelEntry{}}
	for _, m := range snap.Models() {
		if m.Enabled && m.VisibleTo(k.User) && k.AllowsModel(m, m.Name) {
			out.Data = append(out.Data, entryOf(m))
		}
	}
	body, _ := json.Marshal(out)
	ctx.SetContentType("application/json")
	ctx.SetBody(body)
}

// Model serves GET /v1/models/{model}: one model the key may use (by name or alias), or 404
// — also for a model that exists but the key may not use, as OpenAI answers.
func (h *Handler) Model(ctx *fasthttp.RequestCtx) {
	snap, k, ok := h.authenticated(ctx)
	if !ok {
		return
	}
	name, _ := ctx.UserValue("model").(string)
	name = strings.TrimPrefix(name, "/")
	m := snap.Model(name)
	if m == nil || !m.Enabled || !m.VisibleTo(k.User) || !k.AllowsModel(m, name) {
		h.writeError(ctx, &apierr.Error{Kind: apierr.NotFound, Param: "model", Code: "model_not_found",
			Message: "the model `" + truncate(name, 128) + "` does not exist or is not available"})
		return
	}
	body, _ := json.Marshal(entryOf(m))
	ctx.SetContentType("application/json")
	ctx.SetBody(body)
}

// authenticated answers the request id, loads the snapshot and checks the API key; on
// failure it has written the error and ok is false.
func (h *Handler) authenticated(ctx *fasthttp.RequestCtx) (snap *snapshot.Snapshot, k *snapshot.Key, ok bool) {
	h.RequestID(ctx)
	snap = h.o.Snapshots.Current()
	if snap == nil {
		h.writeError(ctx, notReady())
		return nil, nil, false
	}
	k, err := h.authenticate(snap, ctx.Request.Header.Peek("Authorization"), h.o.Now())
	if err != nil {
		h.writeError(ctx, err)
		return nil, nil, false
	}
	return snap, k, true
}

func notReady() error {
	return &apierr.Error{Kind: apierr.Unavailable, Message: "the gateway has not loaded its configuration yet", RetryAfter: time.Second}
}

// writeError is the one place errors become responses.
func (h *Handler) writeError(ctx *fasthttp.RequestCtx, err error) *apierr.Error {
	e := apierr.WriteFast(ctx, err)
	if e.Kind == apierr.Internal && e.Err != nil {
		h.o.Logger.Error("internal error", "request_id", h.RequestID(ctx), "err", e.Err)
	}
	return e
}

// reason maps an error to a bounded rejection label.
func reason(e *apierr.Error) string {
	switch e.Kind {
	case apierr.Unauthenticated:
		return "invalid_key"
	case apierr.PermissionDenied:
		return "forbidden"
	case apierr.NotFound:
		return "not_found"
	case apierr.InvalidRequest, apierr.Unprocessable, apierr.TooLarge:
		return "bad_request"
	case apierr.RateLimited:
		return "rate_limit"
	case apierr.QuotaExceeded:
		return "quota"
	case apierr.Unavailable:
		if e.Code == "backends_busy" {
			return "busy"
		}
		return "no_backend"
	}
	return "other"
}
