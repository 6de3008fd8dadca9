// Package vllm is the engine adapter for vLLM's OpenAI-compatible server (and the
// built-in simulator, which uses vLLM's metric names).
package vllm

import (
	"bytes"
	"encoding/json"
	"fmt"

	"github.com/maas-platform/maas/pkg/registry"
	"github.com/maas-platform/maas/worker/internal/engine"
)

// Adapter reads vllm:num_requests_running / _waiting and the KV-cache usage gauge
// (vllm:kv_cache_usage_perc in the V1 engine, vllm:gpu_cache_usage_perc in V0; both are
// fractions 0..1 despite the name).
//
// vLLM states its concurrency limit (max_num_seqs) in one place only: GET
// /server_info?config_format=json, which vLLM serves only when started with
// VLLM_SERVER_DEV_MODE=1. Its /metrics does not carry it: vllm:cache_config_info's labels
// are the CacheConfig's fields (block_size, num_gpu_blocks, …), and max_num_seqs belongs to
// the SchedulerConfig. Otherwise the limit is read from --max-num-seqs in the command line
// the worker supervises, or must be configured.
var Adapter = engine.Adapter{
	Kind:         registry.KindVLLM,
	LimitName:    "--max-num-seqs",
	HealthPath:   "/health",
	MetricsPath:  "/metrics",
	Running:      []string{"vllm:num_requests_running"},
	Waiting:      []string{"vllm:num_requests_waiting"},
	KVCacheUsage: []string{"vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"},
	LimitProbes: []engine.LimitProbe{{
		Path:  "/server_info?config_format=json",
		Field: "scheduler_config.max_num_seqs",
		Parse: ParseServerInfo,
	}},
	LimitArgs: LimitArgs,
	LoRA: &engine.LoRAAPI{
		LoadPath: "/v1/load_lora_adapter", UnloadPath: "/v1/unload_lora_adapter",
		Answer: engine.VLLMAnswer, SlotArgs: LoRASlotArgs, SlotsName: "--max-loras",
	},
}

// LoRASlotArgs reads how many adapters vLLM keeps loaded: none without --enable-lora;
// else --max-cpu-loras (the CPU cache of adapters; vLLM swaps them into its --max-loras GPU
// slots per batch), else --max-loras, else vLLM's default of 1. Runtime loading also needs
// VLLM_ALLOW_RUNTIME_LORA_UPDATING=True in vLLM's environment; without it the first load
// fails with a message saying so.
func LoRASlotArgs(args []string) (int, string) {
	if !engine.HasArg(args, "--enable-lora", "--enable_lora") {
		return 0, ""
	}
	if n, f, ok := engine.IntArg(args, "--max-cpu-loras", "--max_cpu_loras"); ok {
		return n, f
	}
	if n, f, ok := engine.IntArg(args, "--max-loras", "--max_loras"); ok {
		return n, f
	}
	return 1, "--enable-lora (vLLM's default --max-loras 1)"
}

// ParseServerInfo reads max_num_seqs from vLLM's /server_info?config_format=json, times
// the data-parallel engines this server fronts (parallel_config.data_parallel_size_local,
// else 1): each engine core schedules max_num_seqs sequences. The shape is that of
// vllm/entrypoints/serve/instrumentator/server_info.py: {"vllm_config": {…VllmConfig as
// JSON…}, "vllm_env": {…}, "system_env": {…}}. A version that ignores config_format answers
// vllm_config as a string: no limit stated.
func ParseServerInfo(body []byte) (int, error) {
	var v struct {
		Config json.RawMessage `json:"vllm_config"`
	}
	if err := json.Unmarshal(body, &v); err != nil {
		return 0, fmt.Errorf("decode server_info: %w", err)
	}
	if len(v.Config) == 0 || !bytes.HasPrefix(bytes.TrimSpace(v.Config), []byte("{")) {
		return 0, nil
	}
	var c struct {
		Scheduler struct {
			MaxNumSeqs int `json:"max_num_seqs"`
		} `json:"scheduler_config"`
		Parallel struct {
			DPLocal int `json:"data_parallel_size_local"`
		} `json:"parallel_config"`
	}
	if err := json.Unmarshal(v.Config, &c); err != nil {
		return 0, fmt.Errorf("decode server_info vllm_config: %w", err)
	}
	return c.Scheduler.MaxNumSeqs * max(c.Parallel.DPLocal, 1), nil
}

// LimitArgs reads --max-num-seqs (vLLM's parser also takes --max_num_seqs), times
// --data-parallel-size-local (-dpl) when given, else --data-parallel-size (-dp) unless the
// server is one rank of an externally balanced group (--data-parallel-rank).
func LimitArgs(args []string) (int, string) {
	n, flag, ok := engine.IntArg(args, "--max-num-seqs", "--max_num_seqs")
	if !ok {
		return 0, ""
	}
	if dp, f, ok := engine.IntArg(args, "--data-parallel-size-local", "--data_parallel_size_local", "-dpl"); ok {
		return n * dp, flag + " × " + f
	}
	if !engine.HasArg(args, "--data-parallel-rank", "--data_parallel_rank", "-dpr") {
		if dp, f, ok := engine.IntArg(args, "--data-parallel-size", "--data_parallel_size", "-dp"); ok {
			return n * dp, flag + " × " + f
		}
	}
	return n, flag
}
