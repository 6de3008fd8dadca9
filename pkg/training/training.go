// Package training holds the wire types of control's internal training API: what a worker
// that offers training capacity sends to /internal/v1/fine_tuning/... and what control
// answers. Workers hold no database credentials; everything they learn about a fine-tuning
// job, its files and its fate comes through these calls, authenticated with the internal
// token (Authorization: Bearer MAAS_INTERNAL_TOKEN).
//
// The protocol, in order:
//
//  1. POST /internal/v1/fine_tuning/claim with ClaimRequest. 200 with a Task (the worker now
//     holds the job's lease), or 204 when no job is queued.
//  2. GET each TaskFile.URL (path on control, same internal token) for the dataset bytes.
//  3. While training, POST .../jobs/{id}/heartbeat (HeartbeatRequest) at least every
//     Task.HeartbeatIntervalMS; HeartbeatResponse.Action "stop" means: kill the trainer and
//     forget the job (cancelled by its owner, or the lease was lost and the job given to
//     another worker). POST .../jobs/{id}/events (EventsRequest) with progress lines and
//     metrics; POST .../jobs/{id}/checkpoints (CheckpointRequest) for saved checkpoints.
//     Each of these also renews the lease.
//  4. PUT .../jobs/{id}/adapter with the adapter as a tar archive (Content-Type
//     application/x-tar), then POST .../jobs/{id}/complete (CompleteRequest); or POST
//     .../jobs/{id}/fail (FailRequest) when the trainer failed.
//
// Every call after the claim carries the lease token in the LeaseHeader header. A call
// whose lease is no longer the job's current one is refused with 409 and error code
// LeaseLostCode: the worker stops working on the job.
package training

// LeaseHeader carries the lease token on every call after the claim.
const LeaseHeader = "X-Lease-Token"

// LeaseLostCode is the error code of a 409 answer to a call made with a lease that is no
// longer the job's (expired and re-queued, cancelled, or already finished).
const LeaseLostCode = "lease_lost"

// Heartbeat actions.
const (
	ActionContinue = "continue"
	ActionStop     = "stop"
)

// ClaimRequest is POST /internal/v1/fine_tuning/claim.
type ClaimRequest struct {
	// WorkerID names the worker (stable for its lifetime), for events and operators.
	WorkerID string `json:"worker_id"`
	// GPUs is how many GPUs the worker offers for this job (informational today).
	GPUs int `json:"gpus,omitempty"`
	// LeaseSeconds asks for a lease length; control clamps it to its bounds and uses its
	// default when zero.
	LeaseSeconds float64 `json:"lease_seconds,omitempty"`
}

// Task is a claimed job: everything the trainer needs.
type Task struct {
	JobID          string  `json:"job_id"`
	LeaseToken     string  `json:"lease_token"`
	LeaseExpiresAt int64   `json:"lease_expires_at"` // Unix seconds
	LeaseSeconds   float64 `json:"lease_seconds"`
	// HeartbeatIntervalMS is how often to heartbeat (a third of the lease).
	HeartbeatIntervalMS int `json:"heartbeat_interval_ms"`
	// Attempt counts claims of this job, 1 for the first.
	Attempt         int             `json:"attempt"`
	BaseModel       string          `json:"base_model"`
	FineTunedModel  string          `json:"fine_tuned_model"` // the name the result will be served under
	Seed            int64           `json:"seed"`
	Method          string          `json:"method"` // "supervised"
	Hyperparameters Hyperparameters `json:"hyperparameters"`
	TrainingFile    TaskFile        `json:"training_file"`
	ValidationFile  *TaskFile       `json:"validation_file"`
	// AdapterUploadURL is the path to PUT the adapter tar to.
	AdapterUploadURL string `json:"adapter_upload_url"`
}

// Hyperparameters are the resolved training settings (no "auto" left).
type Hyperparameters struct {
	NEpochs                int     `json:"n_epochs"`
	BatchSize              int     `json:"batch_size"`
	LearningRateMultiplier float64 `json:"learning_rate_multiplier"`
	LoRARank               int     `json:"lora_rank"`
	LoRAAlpha              int     `json:"lora_alpha"`
}

// TaskFile is a dataset to download.
type TaskFile struct {
	ID     string `json:"id"`
	Bytes  int64  `json:"bytes"`
	Tokens int64  `json:"tokens"`
	// URL is a path on control (e.g. /internal/v1/fine_tuning/jobs/ftjob-…/files/file-…);
	// GET it with the internal token and the lease header.
	URL string `json:"url"`
}

// HeartbeatRequest is POST /internal/v1/fine_tuning/jobs/{id}/heartbeat.
type HeartbeatRequest struct {
	WorkerID string `json:"worker_id,omitempty"`
}

// HeartbeatResponse tells the worker whether to go on.
type HeartbeatResponse struct {
	Action         string `json:"action"`           // ActionContinue or ActionStop
	Reason         string `json:"reason,omitempty"` // with stop: cancelled, lease_lost, failed, succeeded
	LeaseExpiresAt int64  `json:"lease_expires_at,omitempty"`
}

// Event is one progress line of the trainer.
type Event struct {
	Level   string `json:"level,omitempty"` // info (default), warn, error
	Message string `json:"message"`
}

// Metric is one training step's figures. Step and TotalSteps are required; losses are
// optional (nil when the trainer does not report them at this step).
type Metric struct {
	Step                   int      `json:"step"`
	TotalSteps             int      `json:"total_steps"`
	TrainLoss              *float64 `json:"train_loss,omitempty"`
	ValidLoss              *float64 `json:"valid_loss,omitempty"`
	TrainMeanTokenAccuracy *float64 `json:"train_mean_token_accuracy,omitempty"`
	ValidMeanTokenAccuracy *float64 `json:"valid_mean_token_accuracy,omitempty"`
}

// EventsRequest is POST /internal/v1/fine_tuning/jobs/{id}/events: messages and metrics in
// the order they happened (at most 1000 of each per call).
type EventsRequest struct {
	Events  []Event  `json:"events,omitempty"`
	Metrics []Metric `json:"metrics,omitempty"`
}

// CheckpointRequest is POST /internal/v1/fine_tuning/jobs/{id}/checkpoints.
type CheckpointRequest struct {
	Step    int    `json:"step"`
	Metrics Metric `json:"metrics"`
}

// CompleteRequest is POST /internal/v1/fine_tuning/jobs/{id}/complete, after the adapter
// was uploaded.
type CompleteRequest struct {
	TrainedTokens int64 `json:"trained_tokens"`
}

// FailRequest is POST /internal/v1/fine_tuning/jobs/{id}/fail.
type FailRequest struct {
	// Code is a short machine-readable reason (default "training_failed").
	Code string `json:"code,omitempty"`
	// Message is shown to the job's owner; the trainer's last error line.
	Message string `json:"message"`
}
