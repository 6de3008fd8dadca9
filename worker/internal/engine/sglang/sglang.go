// Package sglang is the engine adapter for SGLang's server (started with --enable-metrics).
package sglang

import (
	"encoding/json"
	"fmt"
	"strings"

	"github.com/maas-platform/maas/pkg/registry"
	"github.com/maas-platform/maas/worker/internal/engine"
)

// Adapter reads sglang:num_running_reqs, sglang:num_queue_reqs and sglang:token_usage
// (the used share of the KV token pool, 0..1), and the concurrency limit from
// /server_info (named /get_server_info before SGLang deprecated that path; both tried).
var Adapter = engine.Adapter{
	Kind:         registry.KindSGLang,
	LimitName:    "--max-running-requests",
	HealthPath:   "/health",
	MetricsPath:  "/metrics",
	Running:      []string{"sglang:num_running_reqs"},
	Waiting:      []string{"sglang:num_queue_reqs"},
	KVCacheUsage: []string{"sglang:token_usage"},
	LimitProbes: []engine.LimitProbe{
		{Path: "/server_info", Field: field, Parse: ParseServerInfo},
		{Path: "/get_server_info", Field: field, Parse: ParseServerInfo},
	},
	LimitArgs: func(args []string) (int, string) {
		n, flag, _ := engine.IntArg(args, "--max-running-requests", "--max_running_requests")
		return n, flag
	},
	LoRA: &engine.LoRAAPI{
		LoadPath: "/load_lora_adapter", UnloadPath: "/unload_lora_adapter",
		Answer: LoRAAnswer, SlotArgs: LoRASlotArgs, SlotsName: "--max-loaded-loras",
	},
}

// LoRAAnswer reads SGLang's answers to /load_lora_adapter and /unload_lora_adapter: a
// LoRAUpdateOutput {"success", "error_message", "loaded_adapters"}, 200 on success and 400
// on failure (python/sglang/srt/entrypoints/http_server.py). A failed load whose message
// says the name is already loaded, or a failed unload whose message says it is not loaded,
// is reported as such.
func LoRAAnswer(load bool, status int, body []byte) error {
	var out struct {
		Success      bool   `json:"success"`
		ErrorMessage string `json:"error_message"`
	}
	if err := json.Unmarshal(body, &out); err != nil {
		if status == 404 {
			return fmt.Errorf("%w: the engine has no runtime LoRA API (SGLang needs --enable-lora)", engine.ErrNoLoRA)
		}
		return fmt.Errorf("status %d: %.200s", status, body)
	}
	if status == 200 && out.Success {
		return nil
	}
	msg := strings.ToLower(out.ErrorMessage)
	switch {
	case load && strings.Contains(msg, "already"):
		return fmt.Errorf("%w: %s", engine.ErrLoRALoaded, out.ErrorMessage)
	case !load && (strings.Contains(msg, "not loaded") || strings.Contains(msg, "not found") || strings.Contains(msg, "cannot be found")):
		return fmt.Errorf("%w: %s", engine.ErrLoRANotLoaded, out.ErrorMessage)
	}
	return fmt.Errorf("status %d: %s", status, out.ErrorMessage)
}

// LoRASlotArgs reads how many adapters SGLang keeps loaded: none without --enable-lora or
// --lora-paths; else --max-loaded-loras (its CPU-side bound), else --max-loras-per-batch,
// else SGLang's default of 8.
func LoRASlotArgs(args []string) (int, string) {
	if !engine.HasArg(args, "--enable-lora", "--enable_lora", "--lora-paths", "--lora_paths") {
		return 0, ""
	}
	if n, f, ok := engine.IntArg(args, "--max-loaded-loras", "--max_loaded_loras"); ok {
		return n, f
	}
	if n, f, ok := engine.IntArg(args, "--max-loras-per-batch", "--max_loras_per_batch"); ok {
		return n, f
	}
	return 8, "--enable-lora (SGLang's default --max-loras-per-batch 8)"
}

const field = "internal_states[].effective_max_running_requests_per_dp × dp_size"

// ParseServerInfo reads SGLang's server info: the server arguments, the scheduler's info
// and "internal_states", one per data-parallel rank, each with the scheduler's effective
// max_running_requests (computed from memory when the flag is not given). The limit is the
// smallest per-rank figure times dp_size; an older SGLang without the effective figure
// gives the max_running_requests argument when it was set. See the "Get Server Info"
// output in SGLang's docs/basic_usage/native_api.ipynb and get_server_info in
// python/sglang/srt/entrypoints/http_server.py.
func ParseServerInfo(body []byte) (int, error) {
	var v struct {
		MaxRunning *int `json:"max_running_requests"`
		DPSize     *int `json:"dp_size"`
		Internal   []struct {
			Effective *int `json:"effective_max_running_requests_per_dp"`
		} `json:"internal_states"`
	}
	if err := json.Unmarshal(body, &v); err != nil {
		return 0, fmt.Errorf("decode server_info: %w", err)
	}
	per := 0
	for _, s := range v.Internal {
		if s.Effective != nil && *s.Effective > 0 && (per == 0 || *s.Effective < per) {
			per = *s.Effective
		}
	}
	if per > 0 {
		dp := 1
		if v.DPSize != nil && *v.DPSize > 1 {
			dp = *v.DPSize
		}
		return per * dp, nil
	}
	if v.MaxRunning != nil && *v.MaxRunning > 0 {
		return *v.MaxRunning, nil
	}
	return 0, nil
}
