package sim

import (
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/maas-platform/maas/pkg/config"
)

// Options configures a simulator. The zero value is not valid; start from DefaultOptions.
type Options struct {
	// Addr is where the simulator listens (MAAS_SIM_ADDR).
	Addr string
	// ChatModels are served on /v1/chat/completions and /v1/completions (MAAS_SIM_MODELS).
	ChatModels []string
	// EmbeddingModels are served on /v1/embeddings (MAAS_SIM_EMBEDDING_MODELS).
	EmbeddingModels []string
	// TTFT is the time to the first token, after the request left the queue (MAAS_SIM_TTFT).
	TTFT time.Duration
	// ITL is the time between two tokens (MAAS_SIM_ITL).
	ITL time.Duration
	// ITLJitter spreads each inter-token gap uniformly over ITL ± ITLJitter (MAAS_SIM_ITL_JITTER).
	ITLJitter time.Duration
	// MaxConcurrency is how many requests run at once; more wait in a queue
	// (MAAS_SIM_MAX_CONCURRENCY; 0 = no limit). It is also the capacity a worker registers.
	MaxConcurrency int
	// MaxQueue bounds the waiting queue; beyond it requests get 503 (MAAS_SIM_MAX_QUEUE;
	// 0 = unbounded, as vLLM).
	MaxQueue int
	// OutputTokens is the distribution of answer lengths when max_tokens does not cut them
	// (MAAS_SIM_OUTPUT_TOKENS: "N" or "MIN-MAX", uniform).
	OutputTokens Dist
	// EmbeddingDim is the embedding vector length (MAAS_SIM_EMBEDDING_DIM).
	EmbeddingDim int
	// MaxModelLen is the context length: prompt + max_tokens above it is refused with 400
	// (MAAS_SIM_MAX_MODEL_LEN).
	MaxModelLen int
	// KVCacheTokens is the simulated KV-cache size in tokens; usage is the tokens of the
	// running requests over it (MAAS_SIM_KV_CACHE_TOKENS).
	KVCacheTokens int
	// Fail is a failure applied to a FailRate share of requests (MAAS_SIM_FAIL, same
	// syntax as the X-Sim-Fail header; empty = none).
	Fail Failure
	// FailRate is the share of requests, 0..1, that get Fail (MAAS_SIM_FAIL_RATE).
	FailRate float64
	// FailHeaderEnabled makes the simulator honour the X-Sim-Fail request header
	// (MAAS_SIM_FAIL_HEADER; default off). Off, the header is ignored, so a client whose
	// headers reach the engine cannot make it fail and trip the gateways' breakers. Tests
	// that inject failures per request turn it on; Fail above is the operator's own choice
	// and applies either way.
	FailHeaderEnabled bool
	// FlushEveryToken writes and flushes every event of a stream on its own even when there
	// is nothing to wait for (MAAS_SIM_FLUSH_EVERY_TOKEN; default off). Off, a stream with
	// zero TTFT and inter-token latency is written as one body, the cheapest for the
	// simulator; on, each event is one write on the connection, as a real engine's would be,
	// so that a benchmark measures relaying tokens one by one. With any latency set, events
	// are written one by one either way.
	FlushEveryToken bool
	// IdleTimeout closes a keep-alive connection that sends no new request for that long
	// (MAAS_SIM_IDLE_TIMEOUT; default 5s, vLLM's: VLLM_HTTP_TIMEOUT_KEEP_ALIVE, given to
	// uvicorn as timeout_keep_alive), so that clients meet the closes a real engine makes.
	IdleTimeout time.Duration
	// SystemFingerprint is the system_fingerprint of answers (MAAS_SIM_SYSTEM_FINGERPRINT).
	// Empty (the default), the simulator does what vLLM does by default: "system_fingerprint":
	// null in non-streamed answers, no such field in stream chunks. Set, it does what vLLM
	// started with --fingerprint-mode does: the value in non-streamed answers, and in a
	// stream on the usage chunk, or on each choice's finishing chunk when there is none.
	SystemFingerprint string
	// MaxLoRAs is how many LoRA adapters may be loaded at once (MAAS_SIM_MAX_LORAS; vLLM's
	// --max-loras; default 8). A worker reports it to control as the engine's adapter slots.
	MaxLoRAs int
	// RuntimeLoRAUpdating serves /v1/load_lora_adapter and /v1/unload_lora_adapter
	// (MAAS_SIM_RUNTIME_LORA_UPDATING; default on), as vLLM does only with
	// VLLM_ALLOW_RUNTIME_LORA_UPDATING=True; off, both routes answer 404 as vLLM's do.
	RuntimeLoRAUpdating bool

	// Logger receives the simulator's few log lines (start, LoRA changes); nil = discard.
	// Its metrics live in a registry of its own, served on its own /metrics.
	Logger *slog.Logger
}

// DefaultOptions are a zero-latency simulator serving sim-chat and sim-embedding.
func DefaultOptions() Options {
	return Options{
		Addr:            "127.0.0.1:8100",
		ChatModels:      []string{"sim-chat"},
		EmbeddingModels: []string{"sim-embedding"},
		MaxConcurrency:  256,
		OutputTokens:    Dist{Min: 16, Max: 16},
		EmbeddingDim:    384,
		MaxModelLen:     32768,
		KVCacheTokens:   262144,
		FailRate:        1,
		IdleTimeout:     5 * time.Second,
		MaxLoRAs:        8,

		RuntimeLoRAUpdating: true,
	}
}

func (o *Options) validate() error {
	switch {
	case o.Addr == "":
		return &config.Error{Name: "MAAS_SIM_ADDR", Msg: "is empty"}
	case len(o.ChatModels) == 0 && len(o.EmbeddingModels) == 0:
		return &config.Error{Name: "MAAS_SIM_MODELS", Msg: "no model to serve"}
	case o.MaxConcurrency < 0:
		return &config.Error{Name: "MAAS_SIM_MAX_CONCURRENCY", Msg: "must be 0 (no limit) or positive"}
	case o.MaxQueue < 0:
		return &config.Error{Name: "MAAS_SIM_MAX_QUEUE", Msg: "must be 0 (unbounded) or positive"}
	case o.OutputTokens.Min < 1 || o.OutputTokens.Max < o.OutputTokens.Min:
		return &config.Error{Name: "MAAS_SIM_OUTPUT_TOKENS", Msg: "must be N or MIN-MAX with 1 <= MIN <= MAX"}
	case o.EmbeddingDim < 1 || o.EmbeddingDim > 65536:
		return &config.Error{Name: "MAAS_SIM_EMBEDDING_DIM", Msg: "must be 1..65536"}
	case o.MaxModelLen < 1:
		return &config.Error{Name: "MAAS_SIM_MAX_MODEL_LEN", Msg: "must be positive"}
	case o.KVCacheTokens < 1:
		return &config.Error{Name: "MAAS_SIM_KV_CACHE_TOKENS", Msg: "must be positive"}
	case o.IdleTimeout <= 0:
		return &config.Error{Name: "MAAS_SIM_IDLE_TIMEOUT", Msg: "must be positive"}
	case o.MaxLoRAs < 0 || o.MaxLoRAs > 1024:
		return &config.Error{Name: "MAAS_SIM_MAX_LORAS", Msg: "must be 0..1024"}
	case o.FailRate < 0 || o.FailRate > 1:
		return &config.Error{Name: "MAAS_SIM_FAIL_RATE", Msg: "must be between 0 and 1"}
	}
	seen := map[string]bool{}
	for _, m := range append(append([]string(nil), o.ChatModels...), o.EmbeddingModels...) {
		if m == "" || seen[m] {
			return &config.Error{Name: "MAAS_SIM_MODELS", Msg: fmt.Sprintf("model name %q is empty or listed twice", m)}
		}
		seen[m] = true
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// Dist is a distribution of answer lengths: uniform over Min..Max.
type Dist struct{ Min, Max int }

// ParseDist parses "N" or "MIN-MAX".
func ParseDist(s string) (Dist, error) {
	lo, hi, ranged := strings.Cut(strings.TrimSpace(s), "-")
	a, err := strconv.Atoi(strings.TrimSpace(lo))
	if err != nil {
		return Dist{}, fmt.Errorf("%q is not N or MIN-MAX", s)
	}
	b := a
	if ranged {
		if b, err = strconv.Atoi(strings.TrimSpace(hi)); err != nil {
			return Dist{}, fmt.Errorf("%q is not N or MIN-MAX", s)
		}
	}
	if a < 1 || b < a {
		return Dist{}, fmt.Errorf("%q: need 1 <= MIN <= MAX", s)
	}
	return Dist{a, b}, nil
}

func (d Dist) String() string {
	if d.Min == d.Max {
		return strconv.Itoa(d.Min)
	}
	return strconv.Itoa(d.Min) + "-" + strconv.Itoa(d.Max)
}

// pick returns a length for a prompt seed.
func (d Dist) pick(seed uint64) int {
	if d.Max <= d.Min {
		return d.Min
	}
	return d.Min + int(seed%uint64(d.Max-d.Min+1))
}

// Flags holds the raw settings bound by Bind; Options turns them into Options.
type Flags struct {
	addr, models, embModels, outTokens, fail, failRate string
	fingerprint                                        string
	ttft, itl, jitter, idle                            time.Duration
	maxConc, maxQueue, dim, maxLen, kvTokens, maxLoRAs int
	failHeader, flushEvery, runtimeLoRA                bool
}

// Bind declares the simulator's settings (MAAS_SIM_*) on l.
func (f *Flags) Bind(l *config.Loader) {
	d := DefaultOptions()
	l.String(&f.addr, "MAAS_SIM_ADDR", "sim-addr", d.Addr, "simulator listen address")
	l.String(&f.models, "MAAS_SIM_MODELS", "sim-models", strings.Join(d.ChatModels, ","), "comma-separated chat models the simulator serves")
	l.String(&f.embModels, "MAAS_SIM_EMBEDDING_MODELS", "sim-embedding-models", strings.Join(d.EmbeddingModels, ","), "comma-separated embedding models the simulator serves")
	l.Duration(&f.ttft, "MAAS_SIM_TTFT", "sim-ttft", d.TTFT, "simulated time to first token")
	l.Duration(&f.itl, "MAAS_SIM_ITL", "sim-itl", d.ITL, "simulated inter-token latency")
	l.Duration(&f.jitter, "MAAS_SIM_ITL_JITTER", "sim-itl-jitter", d.ITLJitter, "inter-token latency jitter (uniform ±)")
	l.Duration(&f.idle, "MAAS_SIM_IDLE_TIMEOUT", "sim-idle-timeout", d.IdleTimeout, "close keep-alive connections idle this long (vLLM's default: 5s)")
	l.Int(&f.maxConc, "MAAS_SIM_MAX_CONCURRENCY", "sim-max-concurrency", d.MaxConcurrency, "requests running at once (0 = no limit); more wait in a queue")
	l.Int(&f.maxQueue, "MAAS_SIM_MAX_QUEUE", "sim-max-queue", d.MaxQueue, "waiting requests before 503 (0 = unbounded)")
	l.String(&f.outTokens, "MAAS_SIM_OUTPUT_TOKENS", "sim-output-tokens", d.OutputTokens.String(), "answer length when max_tokens does not cut it: N or MIN-MAX")
	l.Int(&f.dim, "MAAS_SIM_EMBEDDING_DIM", "sim-embedding-dim", d.EmbeddingDim, "embedding dimension")
	l.Int(&f.maxLen, "MAAS_SIM_MAX_MODEL_LEN", "sim-max-model-len", d.MaxModelLen, "context length in tokens")
	l.Int(&f.kvTokens, "MAAS_SIM_KV_CACHE_TOKENS", "sim-kv-cache-tokens", d.KVCacheTokens, "simulated KV-cache size in tokens")
	l.String(&f.fail, "MAAS_SIM_FAIL", "sim-fail", "", "failure injected into requests (X-Sim-Fail syntax)")
	l.String(&f.failRate, "MAAS_SIM_FAIL_RATE", "sim-fail-rate", "1", "share of requests (0..1) that get MAAS_SIM_FAIL")
	l.Bool(&f.flushEvery, "MAAS_SIM_FLUSH_EVERY_TOKEN", "sim-flush-every-token", d.FlushEveryToken, "write and flush every stream event on its own, even at zero latency (benchmarks of per-token relaying)")
	l.String(&f.fingerprint, "MAAS_SIM_SYSTEM_FINGERPRINT", "sim-system-fingerprint", d.SystemFingerprint, "system_fingerprint of answers (empty: null in non-streamed answers, absent from chunks, as vLLM by default)")
	l.Int(&f.maxLoRAs, "MAAS_SIM_MAX_LORAS", "sim-max-loras", d.MaxLoRAs, "LoRA adapters loaded at once (vLLM's --max-loras)")
	l.Bool(&f.runtimeLoRA, "MAAS_SIM_RUNTIME_LORA_UPDATING", "sim-runtime-lora-updating", d.RuntimeLoRAUpdating, "serve /v1/load_lora_adapter and /v1/unload_lora_adapter (vLLM: VLLM_ALLOW_RUNTIME_LORA_UPDATING=True)")
	l.Bool(&f.failHeader, "MAAS_SIM_FAIL_HEADER", "sim-fail-header", d.FailHeaderEnabled, "honour the X-Sim-Fail request header (tests only; off: the header is ignored)")
}

// Options returns the validated options the bound settings describe.
func (f *Flags) Options() (Options, error) {
	o := DefaultOptions()
	o.Addr = f.addr
	o.ChatModels = splitList(f.models)
	o.EmbeddingModels = splitList(f.embModels)
	o.TTFT, o.ITL, o.ITLJitter, o.IdleTimeout = f.ttft, f.itl, f.jitter, f.idle
	o.MaxConcurrency, o.MaxQueue = f.maxConc, f.maxQueue
	o.EmbeddingDim, o.MaxModelLen, o.KVCacheTokens = f.dim, f.maxLen, f.kvTokens
	o.FailHeaderEnabled = f.failHeader
	o.FlushEveryToken = f.flushEvery
	o.MaxLoRAs, o.RuntimeLoRAUpdating = f.maxLoRAs, f.runtimeLoRA
	o.SystemFingerprint = strings.TrimSpace(f.fingerprint)
	var err error
	if o.OutputTokens, err = ParseDist(f.outTokens); err != nil {
		return o, &config.Error{Name: "MAAS_SIM_OUTPUT_TOKENS", Msg: err.Error()}
	}
	if o.Fail, err = ParseFailure(f.fail); err != nil {
		return o, &config.Error{Name: "MAAS_SIM_FAIL", Msg: err.Error()}
	}
	if o.FailRate, err = strconv.ParseFloat(strings.TrimSpace(f.failRate), 64); err != nil {
		return o, &config.Error{Name: "MAAS_SIM_FAIL_RATE", Msg: fmt.Sprintf("%q is not a number", f.failRate)}
	}
	if err := o.validate(); err != nil {
		return o, err
	}
	return o, nil
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

var errQueueFull = errors.New("sim: waiting queue full")
