// Package registry holds the wire types of the backend registry: what a worker sends to
// control's /internal/v1/backends endpoints, and what control answers.
package registry

// Engine kinds a worker can front.
const (
	KindVLLM     = "vllm"
	KindSGLang   = "sglang"
	KindTGI      = "tgi"
	KindLlamaCPP = "llamacpp"
	KindOllama   = "ollama"
	KindOpenAI   = "openai"
	KindSim      = "sim"
)

// Backend states.
const (
	StateHealthy   = "healthy"
	StateUnhealthy = "unhealthy"
	StateDraining  = "draining"
)

// RegisterRequest is POST /internal/v1/backends/register.
type RegisterRequest struct {
	// ID is chosen by the worker and stable for its lifetime (re-registration reuses it).
	ID         string   `json:"id"`
	URL        string   `json:"url"`         // base URL of the engine's OpenAI API, without /v1
	EngineKind string   `json:"engine_kind"` // one of the Kind constants
	Models     []string `json:"models"`      // served model names, LoRA adapters included
	Capacity   int      `json:"capacity"`    // in-flight requests the engine accepts before queueing
	// HeartbeatIntervalMS tells control when to consider the backend gone (3 missed intervals).
	HeartbeatIntervalMS int    `json:"heartbeat_interval_ms"`
	WorkerVersion       string `json:"worker_version,omitempty"`
}

// Load is the engine's load as scraped by the worker.
type Load struct {
	Running      int     `json:"running_requests"`
	Waiting      int     `json:"waiting_requests"`
	KVCacheUsage float64 `json:"kv_cache_usage"` // 0..1
	InFlight     int     `json:"in_flight"`      // requests in flight through the worker's view
}

// HeartbeatRequest is POST /internal/v1/backends/{id}/heartbeat.
type HeartbeatRequest struct {
	Load
	// State is healthy, unhealthy (engine down, e.g. being restarted) or draining.
	State  string   `json:"state"`
	Models []string `json:"models,omitempty"` // when set, replaces the served model list
	// AdapterSlots is how many LoRA adapters the engine keeps loaded at once; 0 when it
	// cannot load adapters at run time. With slots, control answers with DesiredAdapters.
	AdapterSlots int `json:"adapter_slots,omitempty"`
	// Adapters are the LoRA adapters the worker loaded in the engine as control placed them
	// (also listed in the served models).
	Adapters []string `json:"adapters,omitempty"`
}

// DesiredAdapter is a LoRA adapter control wants loaded in a backend's engine.
type DesiredAdapter struct {
	Name      string `json:"name"`       // the model it is served as
	BaseModel string `json:"base_model"` // the served model it applies to
	// ArchiveURL is the path on control of the adapter's tar archive (the PEFT adapter
	// directory's files); GET it with the internal token.
	ArchiveURL string `json:"archive_url"`
	// Version changes when the adapter's content does: a worker holding another version
	// loads it again.
	Version string `json:"version"`
	Bytes   int64  `json:"bytes"` // the archive's size
}

// Backend is how control describes a registered backend.
type Backend struct {
	ID                  string   `json:"id"`
	URL                 string   `json:"url"`
	EngineKind          string   `json:"engine_kind"`
	Models              []string `json:"models"`
	Capacity            int      `json:"capacity"`
	Weight              int      `json:"weight"`
	State               string   `json:"state"`
	Disabled            bool     `json:"disabled"`
	HeartbeatIntervalMS int      `json:"heartbeat_interval_ms"`
	Load
	WorkerVersion   string `json:"worker_version"`
	RegisteredAt    string `json:"registered_at"`
	LastHeartbeatAt string `json:"last_heartbeat_at"`
	// AdapterSlots and Adapters are as the worker last reported them.
	AdapterSlots int      `json:"adapter_slots"`
	Adapters     []string `json:"adapters"`
	// DesiredAdapters is set in the answer to a heartbeat that reported adapter slots: the
	// adapters control wants loaded in this backend's engine, at most AdapterSlots. The
	// worker loads those it lacks and unloads those not listed. Absent (nil) otherwise: the
	// worker then changes nothing.
	DesiredAdapters *[]DesiredAdapter `json:"desired_adapters,omitempty"`
}

// NotFoundCode is the error code control answers a heartbeat for a backend it does not know
// (404); the worker then registers again.
const NotFoundCode = "backend_not_found"
