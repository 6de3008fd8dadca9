package server

import (
	"log/slog"
	"time"

	"github.com/maas-platform/maas/pkg/config"
)

// Options configures the gateway process. Field comments are written for operators; every
// field has a MAAS_* variable (see Bind).
type Options struct {
	Common config.Common

	// Addr is where the gateway listens (MAAS_GATEWAY_ADDR).
	Addr string
	// MaxBodyBytes bounds a request body; larger bodies get 413 (MAAS_MAX_BODY_BYTES).
	MaxBodyBytes int
	// FilesMaxBytes bounds a file uploaded through POST /v1/files, which the gateway
	// streams to control (MAAS_FILES_MAX_BYTES, read by control too: give both the same
	// value); 413 beyond. Every other request body is bounded by MaxBodyBytes.
	FilesMaxBytes int
	// MaxHeaderBytes bounds the request line plus headers (MAAS_MAX_HEADER_BYTES).
	MaxHeaderBytes int
	// MaxN is the most choices (n) one chat or completions request may ask for; more is a
	// 400 (MAAS_MAX_N; 0: no limit).
	MaxN int
	// MaxMessages is the most messages one chat request may carry (MAAS_MAX_MESSAGES; 0: no
	// limit).
	MaxMessages int
	// MaxInputs is the most items of one embeddings request's input array, and the most
	// prompts of one completions batch (MAAS_MAX_INPUTS; 0: no limit).
	MaxInputs int
	// ReadTimeout bounds reading one request, headers and body (MAAS_READ_TIMEOUT).
	ReadTimeout time.Duration
	// WriteTimeout bounds writing a non-streamed response (MAAS_WRITE_TIMEOUT). Streams are
	// bounded by RequestTimeout instead.
	WriteTimeout time.Duration
	// IdleTimeout closes keep-alive connections idle this long (MAAS_IDLE_TIMEOUT).
	IdleTimeout time.Duration
	// ShutdownGrace is how long in-flight requests and streams may run after SIGTERM
	// (MAAS_SHUTDOWN_GRACE).
	ShutdownGrace time.Duration

	// ConnectTimeout bounds dialing a backend (MAAS_CONNECT_TIMEOUT).
	ConnectTimeout time.Duration
	// UpstreamIdleTimeout closes a pooled connection to a backend after it sat idle this
	// long. Keep it below the engines' own keep-alive timeout (vLLM and SGLang: 5 s), so
	// that the gateway closes idle connections before an engine does
	// (MAAS_UPSTREAM_IDLE_TIMEOUT).
	UpstreamIdleTimeout time.Duration
	// FirstByteTimeout bounds the wait for a stream's first event, and for the first byte of a
	// backend's answer to a non-streamed request, an interim "100 Continue" included (engines
	// send it when they read the request); past it the request fails over to another
	// backend and counts against the first one's breaker (MAAS_FIRST_BYTE_TIMEOUT).
	FirstByteTimeout time.Duration
	// ResponseHeaderTimeout, when set, bounds the wait of a non-streamed request for the
	// backend's whole answer, counted from the request sent; it must exceed the longest
	// non-streamed generation. 0: only RequestTimeout (MAAS_RESPONSE_HEADER_TIMEOUT).
	ResponseHeaderTimeout time.Duration
	// StreamIdleTimeout bounds the gap between two events of a stream (MAAS_STREAM_IDLE_TIMEOUT).
	StreamIdleTimeout time.Duration
	// RequestTimeout bounds a whole request, streamed or not (MAAS_REQUEST_TIMEOUT).
	RequestTimeout time.Duration
	// AdapterLoadTimeout bounds how long a request for a LoRA adapter loaded on no backend
	// waits for one to load it on demand, never past RequestTimeout; 503 with Retry-After
	// past it (MAAS_ADAPTER_LOAD_TIMEOUT).
	AdapterLoadTimeout time.Duration
	// ForwardHeaders lists client headers passed to engines, comma-separated, besides
	// X-Request-Id (the gateway's id), traceparent and tracestate; every other client header
	// is dropped (MAAS_FORWARD_HEADERS).
	ForwardHeaders string
	// MaxAttempts is how many backends one request may try before its first byte
	// (MAAS_MAX_ATTEMPTS).
	MaxAttempts int
	// QueueTimeout is how long a request waits for a free backend slot when every backend is
	// at capacity, before 503 (MAAS_QUEUE_TIMEOUT).
	QueueTimeout time.Duration
	// QueueSize bounds the requests waiting for a slot, across all users (MAAS_QUEUE_SIZE).
	QueueSize int

	// ReloadInterval is the period of the full snapshot reload (MAAS_SNAPSHOT_RELOAD_INTERVAL).
	ReloadInterval time.Duration
	// LoadRefreshInterval is the period at which backends' load figures and heartbeats are
	// re-read (MAAS_LOAD_REFRESH_INTERVAL).
	LoadRefreshInterval time.Duration
	// KeyLookupRate bounds, per second, the PostgreSQL look-ups of API keys the snapshot does
	// not know yet (a key created a moment ago); 0 turns them off (MAAS_KEY_LOOKUP_RATE).
	KeyLookupRate int

	// LedgerBatch is the largest COPY batch of usage records (MAAS_LEDGER_BATCH).
	LedgerBatch int
	// LedgerFlushInterval is the longest a usage record waits before it is written
	// (MAAS_LEDGER_FLUSH_INTERVAL).
	LedgerFlushInterval time.Duration
	// LedgerBuffer is how many usage records may wait in memory (MAAS_LEDGER_BUFFER): beyond
	// it, and whenever PostgreSQL fails, records go to the spool under DataDir. It bounds
	// what a kill -9 can lose (see README, usage ledger).
	LedgerBuffer int
	// DataDir is the gateway's data directory (MAAS_GATEWAY_DATA_DIR), created at start: the
	// usage ledger's spool, dead letters and state file live in DataDir/ledger. Relative
	// paths are relative to the working directory. Give each gateway of a host its own.
	DataDir string

	// QuotaKeyPrefix starts every Redis key of the global quota tier; platforms sharing a
	// Redis need different prefixes (MAAS_QUOTA_KEY_PREFIX).
	QuotaKeyPrefix string
	// QuotaRedisTimeout bounds one Redis round trip of admissions (MAAS_QUOTA_REDIS_TIMEOUT);
	// past it the request is decided by the local tier and its admission in Redis undone.
	QuotaRedisTimeout time.Duration
	// QuotaRedisFailures is how many Redis round trips in a row must fail before the gateway
	// enforces limits on its own (MAAS_QUOTA_REDIS_FAILURES).
	QuotaRedisFailures int
	// QuotaRedisProbes is how many probes (one a second) in a row must succeed before Redis
	// decides again (MAAS_QUOTA_REDIS_PROBES).
	QuotaRedisProbes int
	// QuotaLeaseSeconds is how much of each limit of a subject a gateway leases from Redis at
	// once and then decides in memory, in seconds of the limit's steady rate (1 = 1/60 of a
	// per-minute limit, of the monthly budget and of the concurrency limit); 0 = no leases,
	// every request decided in Redis (MAAS_QUOTA_LEASE_SECONDS).
	QuotaLeaseSeconds int

	// PprofAddr, when set, serves Go's /debug/pprof on this address (MAAS_PPROF_ADDR); keep
	// it on loopback.
	PprofAddr string

	// AccessLog writes one log line per request (MAAS_ACCESS_LOG).
	AccessLog bool
	// LogJSON forces JSON logs outside production (MAAS_LOG_JSON).
	LogJSON bool

	// Logger is the process logger; nil discards.
	Logger *slog.Logger
}

// DefaultOptions returns the defaults documented in the README.
func DefaultOptions() Options {
	return Options{
		Addr:                "127.0.0.1:8000",
		MaxBodyBytes:        10 << 20,
		FilesMaxBytes:       512 << 20,
		MaxHeaderBytes:      8 << 10,
		MaxN:                16,
		MaxMessages:         2048,
		MaxInputs:           2048,
		ReadTimeout:         60 * time.Second,
		WriteTimeout:        60 * time.Second,
		IdleTimeout:         120 * time.Second,
		ShutdownGrace:       30 * time.Second,
		ConnectTimeout:      2 * time.Second,
		UpstreamIdleTimeout: 3 * time.Second,
		FirstByteTimeout:    60 * time.Second,
		StreamIdleTimeout:   60 * time.Second,
		RequestTimeout:      10 * time.Minute,
		AdapterLoadTimeout:  30 * time.Second,
		MaxAttempts:         3,
		QueueTimeout:        10 * time.Second,
		QueueSize:           4096,
		ReloadInterval:      30 * time.Second,
		LoadRefreshInterval: time.Second,
		KeyLookupRate:       50,
		LedgerBatch:         1000,
		LedgerFlushInterval: 200 * time.Millisecond,
		LedgerBuffer:        5000,
		DataDir:             ".data/gateway",
		QuotaKeyPrefix:      "maas:quota:",
		QuotaRedisTimeout:   50 * time.Millisecond,
		QuotaRedisFailures:  3,
		QuotaRedisProbes:    3,
		QuotaLeaseSeconds:   1,
		AccessLog:           true,
	}
}

// Bind declares every setting on l with o's current values as defaults.
func (o *Options) Bind(l *config.Loader) {
	o.Common.Bind(l)
	l.String(&o.Addr, "MAAS_GATEWAY_ADDR", "addr", o.Addr, "listen address")
	l.Int(&o.MaxBodyBytes, "MAAS_MAX_BODY_BYTES", "max-body-bytes", o.MaxBodyBytes, "largest request body (413 beyond)")
	l.Int(&o.FilesMaxBytes, "MAAS_FILES_MAX_BYTES", "files-max-bytes", o.FilesMaxBytes, "largest file uploaded through /v1/files (413 beyond)")
	l.Int(&o.MaxHeaderBytes, "MAAS_MAX_HEADER_BYTES", "max-header-bytes", o.MaxHeaderBytes, "largest request header block")
	l.Int(&o.MaxN, "MAAS_MAX_N", "max-n", o.MaxN, "most choices (n) per request (0: no limit)")
	l.Int(&o.MaxMessages, "MAAS_MAX_MESSAGES", "max-messages", o.MaxMessages, "most messages per chat request (0: no limit)")
	l.Int(&o.MaxInputs, "MAAS_MAX_INPUTS", "max-inputs", o.MaxInputs, "most input items per embeddings request, prompts per completions batch (0: no limit)")
	l.Duration(&o.ReadTimeout, "MAAS_READ_TIMEOUT", "read-timeout", o.ReadTimeout, "time to read one request")
	l.Duration(&o.WriteTimeout, "MAAS_WRITE_TIMEOUT", "write-timeout", o.WriteTimeout, "time to write a non-streamed response")
	l.Duration(&o.IdleTimeout, "MAAS_IDLE_TIMEOUT", "idle-timeout", o.IdleTimeout, "keep-alive idle timeout")
	l.Duration(&o.ShutdownGrace, "MAAS_SHUTDOWN_GRACE", "shutdown-grace", o.ShutdownGrace, "time in-flight requests may finish after SIGTERM")
	l.Duration(&o.ConnectTimeout, "MAAS_CONNECT_TIMEOUT", "connect-timeout", o.ConnectTimeout, "backend dial timeout")
	l.Duration(&o.UpstreamIdleTimeout, "MAAS_UPSTREAM_IDLE_TIMEOUT", "upstream-idle-timeout", o.UpstreamIdleTimeout, "idle time after which a pooled backend connection is closed (below the engines' keep-alive)")
	l.Duration(&o.FirstByteTimeout, "MAAS_FIRST_BYTE_TIMEOUT", "first-byte-timeout", o.FirstByteTimeout, "wait for a backend's first byte (a stream's first event)")
	l.Duration(&o.ResponseHeaderTimeout, "MAAS_RESPONSE_HEADER_TIMEOUT", "response-header-timeout", o.ResponseHeaderTimeout, "wait for a non-streamed answer (0: the request timeout)")
	l.Duration(&o.StreamIdleTimeout, "MAAS_STREAM_IDLE_TIMEOUT", "stream-idle-timeout", o.StreamIdleTimeout, "largest gap between stream events")
	l.Duration(&o.RequestTimeout, "MAAS_REQUEST_TIMEOUT", "request-timeout", o.RequestTimeout, "total time of one request")
	l.Duration(&o.AdapterLoadTimeout, "MAAS_ADAPTER_LOAD_TIMEOUT", "adapter-load-timeout", o.AdapterLoadTimeout, "wait for a LoRA adapter loaded nowhere to be loaded on demand")
	l.String(&o.ForwardHeaders, "MAAS_FORWARD_HEADERS", "forward-headers", o.ForwardHeaders, "extra client headers passed to engines (comma-separated)")
	l.Int(&o.MaxAttempts, "MAAS_MAX_ATTEMPTS", "max-attempts", o.MaxAttempts, "backends tried per request before the first byte")
	l.Duration(&o.QueueTimeout, "MAAS_QUEUE_TIMEOUT", "queue-timeout", o.QueueTimeout, "wait for a backend slot when all are full")
	l.Int(&o.QueueSize, "MAAS_QUEUE_SIZE", "queue-size", o.QueueSize, "requests that may wait for a backend slot")
	l.Duration(&o.ReloadInterval, "MAAS_SNAPSHOT_RELOAD_INTERVAL", "snapshot-reload-interval", o.ReloadInterval, "full snapshot reload period")
	l.Duration(&o.LoadRefreshInterval, "MAAS_LOAD_REFRESH_INTERVAL", "load-refresh-interval", o.LoadRefreshInterval, "backend load refresh period")
	l.Int(&o.KeyLookupRate, "MAAS_KEY_LOOKUP_RATE", "key-lookup-rate", o.KeyLookupRate, "database look-ups per second of keys not yet in the snapshot (0: off)")
	l.Int(&o.LedgerBatch, "MAAS_LEDGER_BATCH", "ledger-batch", o.LedgerBatch, "usage records per COPY")
	l.Duration(&o.LedgerFlushInterval, "MAAS_LEDGER_FLUSH_INTERVAL", "ledger-flush-interval", o.LedgerFlushInterval, "longest wait before usage records are written")
	l.Int(&o.LedgerBuffer, "MAAS_LEDGER_BUFFER", "ledger-buffer", o.LedgerBuffer, "usage records held in memory before they go to the spool")
	l.String(&o.DataDir, "MAAS_GATEWAY_DATA_DIR", "data-dir", o.DataDir, "data directory (usage spool, dead letters)")
	l.String(&o.QuotaKeyPrefix, "MAAS_QUOTA_KEY_PREFIX", "quota-key-prefix", o.QuotaKeyPrefix, "prefix of the quota keys in Redis")
	l.Duration(&o.QuotaRedisTimeout, "MAAS_QUOTA_REDIS_TIMEOUT", "quota-redis-timeout", o.QuotaRedisTimeout, "longest wait for Redis to admit a request")
	l.Int(&o.QuotaRedisFailures, "MAAS_QUOTA_REDIS_FAILURES", "quota-redis-failures", o.QuotaRedisFailures, "failed Redis round trips in a row before local limits")
	l.Int(&o.QuotaRedisProbes, "MAAS_QUOTA_REDIS_PROBES", "quota-redis-probes", o.QuotaRedisProbes, "good Redis probes in a row before global limits again")
	l.Int(&o.QuotaLeaseSeconds, "MAAS_QUOTA_LEASE_SECONDS", "quota-lease-seconds", o.QuotaLeaseSeconds, "seconds of each limit a gateway leases from Redis at once (0: none)")
	l.String(&o.PprofAddr, "MAAS_PPROF_ADDR", "pprof-addr", o.PprofAddr, "address of the /debug/pprof server (empty: off)")
	l.Bool(&o.AccessLog, "MAAS_ACCESS_LOG", "access-log", o.AccessLog, "one log line per request")
	l.Bool(&o.LogJSON, "MAAS_LOG_JSON", "log-json", o.LogJSON, "JSON logs")
}

// Validate checks the settings and returns a *config.Error naming the first bad one.
func (o *Options) Validate() error {
	if err := o.Common.Validate(true, false); err != nil {
		return err
	}
	if err := o.Common.RequireInternalToken(); err != nil {
		return err
	}
	if o.Addr == "" {
		return &config.Error{Name: "MAAS_GATEWAY_ADDR", Msg: "is empty"}
	}
	positive := []struct {
		name string
		v    int64
	}{
		{"MAAS_MAX_BODY_BYTES", int64(o.MaxBodyBytes)},
		{"MAAS_MAX_HEADER_BYTES", int64(o.MaxHeaderBytes)},
		{"MAAS_FILES_MAX_BYTES", int64(o.FilesMaxBytes)},
		{"MAAS_READ_TIMEOUT", int64(o.ReadTimeout)},
		{"MAAS_WRITE_TIMEOUT", int64(o.WriteTimeout)},
		{"MAAS_IDLE_TIMEOUT", int64(o.IdleTimeout)},
		{"MAAS_CONNECT_TIMEOUT", int64(o.ConnectTimeout)},
		{"MAAS_UPSTREAM_IDLE_TIMEOUT", int64(o.UpstreamIdleTimeout)},
		{"MAAS_FIRST_BYTE_TIMEOUT", int64(o.FirstByteTimeout)},
		{"MAAS_STREAM_IDLE_TIMEOUT", int64(o.StreamIdleTimeout)},
		{"MAAS_REQUEST_TIMEOUT", int64(o.RequestTimeout)},
		{"MAAS_ADAPTER_LOAD_TIMEOUT", int64(o.AdapterLoadTimeout)},
		{"MAAS_MAX_ATTEMPTS", int64(o.MaxAttempts)},
		{"MAAS_QUEUE_TIMEOUT", int64(o.QueueTimeout)},
		{"MAAS_SNAPSHOT_RELOAD_INTERVAL", int64(o.ReloadInterval)},
		{"MAAS_LOAD_REFRESH_INTERVAL", int64(o.LoadRefreshInterval)},
		{"MAAS_LEDGER_BATCH", int64(o.LedgerBatch)},
		{"MAAS_LEDGER_FLUSH_INTERVAL", int64(o.LedgerFlushInterval)},
		{"MAAS_LEDGER_BUFFER", int64(o.LedgerBuffer)},
		{"MAAS_QUOTA_REDIS_TIMEOUT", int64(o.QuotaRedisTimeout)},
		{"MAAS_QUOTA_REDIS_FAILURES", int64(o.QuotaRedisFailures)},
		{"MAAS_QUOTA_REDIS_PROBES", int64(o.QuotaRedisProbes)},
	}
	for _, p := range positive {
		if p.v <= 0 {
			return &config.Error{Name: p.name, Msg: "must be positive"}
		}
	}
	for _, nn := range []struct {
		name string
		v    int
	}{{"MAAS_MAX_N", o.MaxN}, {"MAAS_MAX_MESSAGES", o.MaxMessages}, {"MAAS_MAX_INPUTS", o.MaxInputs}, {"MAAS_QUOTA_LEASE_SECONDS", o.QuotaLeaseSeconds}} {
		if nn.v < 0 {
			return &config.Error{Name: nn.name, Msg: "must not be negative"}
		}
	}
	if o.QuotaLeaseSeconds > 60 {
		return &config.Error{Name: "MAAS_QUOTA_LEASE_SECONDS", Msg: "must be at most 60 (a whole per-minute limit)"}
	}
	if o.KeyLookupRate < 0 {
		return &config.Error{Name: "MAAS_KEY_LOOKUP_RATE", Msg: "must not be negative"}
	}
	if o.ResponseHeaderTimeout < 0 {
		return &config.Error{Name: "MAAS_RESPONSE_HEADER_TIMEOUT", Msg: "must not be negative"}
	}
	if o.QueueSize < 0 {
		return &config.Error{Name: "MAAS_QUEUE_SIZE", Msg: "must not be negative"}
	}
	if o.DataDir == "" {
		return &config.Error{Name: "MAAS_GATEWAY_DATA_DIR", Msg: "is empty"}
	}
	if o.MaxHeaderBytes < 1024 {
		return &config.Error{Name: "MAAS_MAX_HEADER_BYTES", Msg: "must be at least 1024"}
	}
	return nil
}
