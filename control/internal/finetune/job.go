package finetune

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"math"
	"math/big"
	"regexp"

	"github.com/maas-platform/maas/pkg/apierr"
	"github.com/maas-platform/maas/pkg/textcheck"
	"github.com/maas-platform/maas/pkg/training"
)

// Job statuses.
const (
	StatusValidating = "validating_files"
	StatusQueued     = "queued"
	StatusRunning    = "running"
	StatusSucceeded  = "succeeded"
	StatusFailed     = "failed"
	StatusCancelled  = "cancelled"
)

// Default hyperparameters ("auto" resolves to these) and their bounds.
const (
	DefaultNEpochs      = 3
	DefaultBatchSize    = 4
	DefaultLRMultiplier = 1.0
	DefaultLoRARank     = 16
	DefaultLoRAAlpha    = 32

	MaxNEpochs      = 50
	MaxBatchSize    = 256
	MaxLRMultiplier = 10.0
	MaxLoRARank     = 256
	MaxLoRAAlpha    = 1024
	MaxSuffix       = 40
)

// JobError is why a job failed.
type JobError struct {
	Code    string  `json:"code"`
	Message string  `json:"message"`
	Param   *string `json:"param"`
}

// Method is the fine-tuning method with its resolved hyperparameters.
type Method struct {
	Type       string     `json:"type"`
	Supervised Supervised `json:"supervised"`
}

// Supervised is the supervised method's settings.
type Supervised struct {
	Hyperparameters training.Hyperparameters `json:"hyperparameters"`
}

// Job is a fine-tuning job in OpenAI's shape (fine_tuning.job), plus the internal fields
// orchestration needs (not serialized).
type Job struct {
	Object             string                   `json:"object"`
	ID                 string                   `json:"id"`
	Model              string                   `json:"model"`
	CreatedAt          int64                    `json:"created_at"`
	FinishedAt         *int64                   `json:"finished_at"`
	FineTunedModel     *string                  `json:"fine_tuned_model"`
	OrganizationID     string                   `json:"organization_id"`
	ResultFiles        []string                 `json:"result_files"`
	Status             string                   `json:"status"`
	ValidationFile     *string                  `json:"validation_file"`
	TrainingFile       string                   `json:"training_file"`
	Hyperparameters    training.Hyperparameters `json:"hyperparameters"`
	TrainedTokens      *int64                   `json:"trained_tokens"`
	Error              *JobError                `json:"error"`
	Seed               int64                    `json:"seed"`
	EstimatedFinish    *int64                   `json:"estimated_finish"`
	Integrations       []any                    `json:"integrations"`
	Metadata           map[string]string        `json:"metadata"`
	Method             Method                   `json:"method"`
	UserProvidedSuffix *string                  `json:"user_provided_suffix"`

	UserID         int64  `json:"-"`
	Attempts       int    `json:"-"`
	LeaseToken     string `json:"-"`
	LeaseExpiresAt int64  `json:"-"`
	LeaseMS        int64  `json:"-"`
	AdapterKey     string `json:"-"`
	AdapterBytes   int64  `json:"-"`
	Trained        bool   `json:"-"`
	WorkerID       string `json:"-"`
}

// Terminal reports whether the job's status is final.
func (j *Job) Terminal() bool {
	return j.Status == StatusSucceeded || j.Status == StatusFailed || j.Status == StatusCancelled
}

// Event is a job event in OpenAI's shape (fine_tuning.job.event).
type Event struct {
	Object    string         `json:"object"`
	ID        string         `json:"id"`
	CreatedAt int64          `json:"created_at"`
	Level     string         `json:"level"`
	Message   string         `json:"message"`
	Data      map[string]any `json:"data"`
	Type      string         `json:"type"`
}

// Checkpoint is a saved training checkpoint in OpenAI's shape (fine_tuning.job.checkpoint).
type Checkpoint struct {
	Object                   string         `json:"object"`
	ID                       string         `json:"id"`
	CreatedAt                int64          `json:"created_at"`
	FineTunedModelCheckpoint string         `json:"fine_tuned_model_checkpoint"`
	FineTuningJobID          string         `json:"fine_tuning_job_id"`
	Metrics                  map[string]any `json:"metrics"`
	StepNumber               int            `json:"step_number"`
}

const idAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"

// newID returns prefix followed by 24 random base62 characters.
func newID(prefix string) string {
	b := make([]byte, 24)
	max := big.NewInt(int64(len(idAlphabet)))
	for i := range b {
		n, err := rand.Int(rand.Reader, max)
		if err != nil {
			panic(err) // crypto/rand never fails on supported platforms
		}
		b[i] = idAlphabet[n.Int64()]
	}
	return prefix + string(b)
}

// FineTunedModelName is the name a job's result is served under: ft:<base>:<suffix>:<job-id>
// (the suffix empty when none was given).
func FineTunedModelName(base, suffix, jobID string) string {
	return "ft:" + base + ":" + suffix + ":" + jobID
}

// maxModelName is the models table's bound on a name.
const maxModelName = 128

// createRequest is the body of POST /v1/fine_tuning/jobs.
type createRequest struct {
	Model          string            `json:"model"`
	TrainingFile   string            `json:"training_file"`
	ValidationFile *string           `json:"validation_file"`
	Suffix         *string           `json:"suffix"`
	Seed           *int64            `json:"seed"`
	Method         *methodRequest    `json:"method"`
	Metadata       map[string]string `json:"metadata"`
	// Hyperparameters is OpenAI's deprecated top-level form (method is preferred).
	Hyperparameters *hyperRequest   `json:"hyperparameters"`
	Integrations    json.RawMessage `json:"integrations"`
}

type methodRequest struct {
	Type       string `json:"type"`
	Supervised *struct {
		Hyperparameters *hyperRequest `json:"hyperparameters"`
	} `json:"supervised"`
	DPO           json.RawMessage `json:"dpo"`
	Reinforcement json.RawMessage `json:"reinforcement"`
}

// hyperRequest holds each value as given: a number or "auto".
type hyperRequest struct {
	NEpochs                json.RawMessage `json:"n_epochs"`
	BatchSize              json.RawMessage `json:"batch_size"`
	LearningRateMultiplier json.RawMessage `json:"learning_rate_multiplier"`
	LoRARank               json.RawMessage `json:"lora_rank"`
	LoRAAlpha              json.RawMessage `json:"lora_alpha"`
}

var (
	suffixRE = regexp.MustCompile(`^[A-Za-z0-9_-]{1,40}$`)
	fileIDRE = regexp.MustCompile(`^file-[A-Za-z0-9]{1,64}$`)
)

// resolveHyper validates h (nil: every value auto) and fills defaults. prefix names the
// object in error params ("method.supervised.hyperparameters").
func resolveHyper(h *hyperRequest, prefix string) (training.Hyperparameters, error) {
	out := training.Hyperparameters{
		NEpochs: DefaultNEpochs, BatchSize: DefaultBatchSize, LearningRateMultiplier: DefaultLRMultiplier,
		LoRARank: DefaultLoRARank, LoRAAlpha: DefaultLoRAAlpha,
	}
	if h == nil {
		return out, nil
	}
	ints := []struct {
		name string
		raw  json.RawMessage
		max  int
		dst  *int
	}{
		{"n_epochs", h.NEpochs, MaxNEpochs, &out.NEpochs},
		{"batch_size", h.BatchSize, MaxBatchSize, &out.BatchSize},
		{"lora_rank", h.LoRARank, MaxLoRARank, &out.LoRARank},
		{"lora_alpha", h.LoRAAlpha, MaxLoRAAlpha, &out.LoRAAlpha},
	}
	for _, v := range ints {
		f, auto, ok := autoNumber(v.raw)
		param := prefix + "." + v.name
		if !ok || (!auto && (f != math.Trunc(f) || f < 1 || f > float64(v.max))) {
			return out, apierr.Param(param, "%s must be \"auto\" or an integer from 1 to %d", param, v.max)
		}
		if !auto {
			*v.dst = int(f)
		}
	}
	f, auto, ok := autoNumber(h.LearningRateMultiplier)
	param := prefix + ".learning_rate_multiplier"
	if !ok || (!auto && (f <= 0 || f > MaxLRMultiplier)) {
		return out, apierr.Param(param, "%s must be \"auto\" or a number above 0 and at most %g", param, MaxLRMultiplier)
	}
	if !auto {
		out.LearningRateMultiplier = f
	}
	return out, nil
}

// autoNumber reads a JSON value that is absent or null or "auto" (auto) or a number.
func autoNumber(raw json.RawMessage) (f float64, auto, ok bool) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" || string(raw) == `"auto"` {
		return 0, true, true
	}
	if err := json.Unmarshal(raw, &f); err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
		return 0, false, false
	}
	return f, false, true
}

// resolve validates the request's own fields (not what needs the database) and returns the
// resolved method.
func (r *createRequest) resolve() (Method, error) {
	if r.Model == "" {
		return Method{}, apierr.Param("model", "model is required")
	}
	if len(r.Model) > 256 || !textcheck.Valid(r.Model) {
		return Method{}, apierr.Param("model", "model must be a model name")
	}
	if r.TrainingFile == "" {
		return Method{}, apierr.Param("training_file", "training_file is required")
	}
	if !fileIDRE.MatchString(r.TrainingFile) {
		return Method{}, apierr.Param("training_file", "training_file must be a file id (file-…)")
	}
	if r.ValidationFile != nil && *r.ValidationFile == "" {
		r.ValidationFile = nil
	}
	if r.ValidationFile != nil && !fileIDRE.MatchString(*r.ValidationFile) {
		return Method{}, apierr.Param("validation_file", "validation_file must be a file id (file-…)")
	}
	if r.Suffix != nil && *r.Suffix == "" {
		r.Suffix = nil
	}
	if r.Suffix != nil && !suffixRE.MatchString(*r.Suffix) {
		return Method{}, apierr.Param("suffix", "suffix must be 1 to %d characters: letters, digits, '-' and '_'", MaxSuffix)
	}
	if r.Seed != nil && (*r.Seed < 0 || *r.Seed > math.MaxInt32) {
		return Method{}, apierr.Param("seed", "seed must be an integer from 0 to %d", math.MaxInt32)
	}
	if len(r.Metadata) > 16 {
		return Method{}, apierr.Param("metadata", "metadata may have at most 16 keys")
	}
	for k, v := range r.Metadata {
		if len(k) > 64 || len(v) > 512 {
			return Method{}, apierr.Param("metadata", "metadata keys have at most 64 characters and values at most 512")
		}
		if !textcheck.Valid(k) || !textcheck.Valid(v) {
			return Method{}, apierr.Param("metadata", "metadata keys and values must be valid UTF-8 without NUL characters")
		}
	}
	if raw := bytes.TrimSpace(r.Integrations); len(raw) > 0 && string(raw) != "null" && string(raw) != "[]" {
		return Method{}, apierr.Param("integrations", "integrations are not supported")
	}
	m := Method{Type: "supervised"}
	var err error
	switch {
	case r.Method != nil:
		if r.Method.Type != "supervised" {
			return Method{}, apierr.Param("method.type", "method.type must be \"supervised\" (dpo and reinforcement are not supported)")
		}
		if r.Hyperparameters != nil {
			return Method{}, apierr.Param("hyperparameters", "give hyperparameters in method.supervised.hyperparameters, not both there and at the top level")
		}
		var h *hyperRequest
		if r.Method.Supervised != nil {
			h = r.Method.Supervised.Hyperparameters
		}
		m.Supervised.Hyperparameters, err = resolveHyper(h, "method.supervised.hyperparameters")
	default:
		m.Supervised.Hyperparameters, err = resolveHyper(r.Hyperparameters, "hyperparameters")
	}
	if err != nil {
		return Method{}, err
	}
	suffix := ""
	if r.Suffix != nil {
		suffix = *r.Suffix
	}
	if n := len(FineTunedModelName(r.Model, suffix, newID("ftjob-"))); n > maxModelName {
		return Method{}, apierr.Param("suffix", "the fine-tuned model's name ft:%s:%s:<job id> would have %d characters; at most %d: shorten the suffix", r.Model, suffix, n, maxModelName)
	}
	return m, nil
}

func unix(t interface{ Unix() int64 }) int64 { return t.Unix() }

func ptr[T any](v T) *T { return &v }

func orgID(userID int64) string { return fmt.Sprintf("user-%d", userID) }
