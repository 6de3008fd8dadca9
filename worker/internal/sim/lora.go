package sim

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/valyala/fasthttp"
)

// LoRA adapters at run time, as vLLM serves them when started with --enable-lora and
// VLLM_ALLOW_RUNTIME_LORA_UPDATING=True (Options.RuntimeLoRAUpdating):
//
//   - POST /v1/load_lora_adapter {"lora_name", "lora_path"} answers 200 with the text
//     "Success: LoRA adapter '<name>' added successfully."; 400 InvalidUserInput when a field
//     is missing or the name is already loaded (unless "load_inplace": true); 404
//     NotFoundError "Loading lora <name> failed: No adapter found for <path>" when the path
//     is not a directory holding a PEFT adapter (adapter_config.json).
//   - POST /v1/unload_lora_adapter {"lora_name"} answers 200 "Success: LoRA adapter '<name>'
//     removed successfully."; 400 without a name; 404 NotFoundError when not loaded.
//   - /v1/models lists each adapter with root = its path and parent = the base model.
//   - A request naming a loaded adapter is served (and metered) under the adapter's name; a
//     request naming one that is not loaded gets vLLM's 404 "The model `x` does not exist.".
//   - Without RuntimeLoRAUpdating both routes are absent (404 {"detail":"Not Found"}, as
//     FastAPI answers an unknown route).
//
// Errors have vLLM's shape: {"error": {"message", "type", "param": null, "code": <status>}}.
//
// Departure: vLLM accepts more adapters than --max-loras (the GPU slots) and swaps them
// through its CPU cache (--max-cpu-loras, least recently used evicted), paying a reload on
// the next request. The simulator refuses a load beyond MaxLoRAs (400) instead, so that a
// worker or a placement that overfills an engine is seen, not silently slowed down. The
// adapter's weights are not read: only adapter_config.json's presence is checked.

// loraRequest is the body of vLLM's /v1/load_lora_adapter and /v1/unload_lora_adapter.
// base_model_name is the simulator's extension (vLLM attaches runtime adapters to its first
// served model).
type loraRequest struct {
	LoRAName      string `json:"lora_name"`
	LoRAPath      string `json:"lora_path"`
	LoadInplace   bool   `json:"load_inplace"`
	BaseModelName string `json:"base_model_name"`
}

// vllmError writes vLLM's error body.
func vllmError(ctx *fasthttp.RequestCtx, status int, typ, msg string) {
	b, _ := json.Marshal(map[string]any{"error": map[string]any{"message": msg, "type": typ, "param": nil, "code": status}})
	ctx.Response.Header.SetContentType("application/json")
	ctx.SetStatusCode(status)
	ctx.SetBody(b)
}

// notFoundRoute is FastAPI's answer to a route it does not have.
func notFoundRoute(ctx *fasthttp.RequestCtx) {
	ctx.Response.Header.SetContentType("application/json")
	ctx.SetStatusCode(404)
	ctx.SetBodyString(`{"detail":"Not Found"}`)
}

// isPEFTAdapter tells whether dir holds a PEFT adapter.
func isPEFTAdapter(dir string) bool {
	st, err := os.Stat(filepath.Join(dir, "adapter_config.json"))
	return err == nil && st.Mode().IsRegular()
}

// LoRAs returns the names of the loaded LoRA adapters, in load order.
func (s *Sim) LoRAs() []string {
	var out []string
	for _, m := range s.models.Load().order {
		if m.parent != "" {
			out = append(out, m.name)
		}
	}
	return out
}

// MaxLoRAs is how many adapters may be loaded at once.
func (s *Sim) MaxLoRAs() int { return s.o.MaxLoRAs }

func (s *Sim) loadLoRA(ctx *fasthttp.RequestCtx) {
	var req loraRequest
	if err := json.Unmarshal(ctx.PostBody(), &req); err != nil {
		vllmError(ctx, 400, "BadRequestError", "invalid JSON body: "+err.Error())
		return
	}
	if req.LoRAName == "" || req.LoRAPath == "" {
		vllmError(ctx, 400, "InvalidUserInput", "Both 'lora_name' and 'lora_path' must be provided.")
		return
	}
	s.loraMu.Lock()
	defer s.loraMu.Unlock()
	old := s.models.Load()
	existing := old.byName[req.LoRAName]
	if existing != nil && (existing.parent == "" || !req.LoadInplace) {
		if existing.parent == "" {
			vllmError(ctx, 400, "InvalidUserInput", fmt.Sprintf("The lora adapter '%s' has the name of a served base model.", req.LoRAName))
			return
		}
		vllmError(ctx, 400, "InvalidUserInput", fmt.Sprintf("The lora adapter '%s' has already been loaded. "+
			"If you want to load the adapter in place, set 'load_inplace' to True.", req.LoRAName))
		return
	}
	if !isPEFTAdapter(req.LoRAPath) {
		vllmError(ctx, 404, "NotFoundError", fmt.Sprintf("Loading lora %s failed: No adapter found for %s", req.LoRAName, req.LoRAPath))
		return
	}
	if existing == nil && len(s.LoRAs()) >= s.o.MaxLoRAs {
		vllmError(ctx, 400, "BadRequestError", fmt.Sprintf("simulator: all %d LoRA slots are in use (MAAS_SIM_MAX_LORAS); unload an adapter first", s.o.MaxLoRAs))
		return
	}
	base := req.BaseModelName
	if base == "" {
		if len(s.o.ChatModels) == 0 {
			vllmError(ctx, 400, "BadRequestError", "no base model to attach a LoRA adapter to")
			return
		}
		base = s.o.ChatModels[0]
	}
	if bm := old.byName[base]; bm == nil || bm.embedding || bm.parent != "" {
		vllmError(ctx, 400, "BadRequestError", fmt.Sprintf("base model %q is not a served chat model", base))
		return
	}
	t := &modelTable{byName: make(map[string]*model, len(old.byName)+1)}
	for _, m := range old.order {
		if m.name != req.LoRAName {
			t.add(m)
		}
	}
	t.add(s.newModel(req.LoRAName, false, base, req.LoRAPath))
	s.models.Store(t)
	s.log.Info("lora adapter loaded", "lora_name", req.LoRAName, "base_model", base, "lora_path", req.LoRAPath)
	ctx.SetStatusCode(200)
	ctx.SetBodyString(fmt.Sprintf("Success: LoRA adapter '%s' added successfully.", req.LoRAName))
}

func (s *Sim) unloadLoRA(ctx *fasthttp.RequestCtx) {
	var req loraRequest
	if err := json.Unmarshal(ctx.PostBody(), &req); err != nil {
		vllmError(ctx, 400, "BadRequestError", "invalid JSON body: "+err.Error())
		return
	}
	if req.LoRAName == "" {
		vllmError(ctx, 400, "InvalidUserInput", "'lora_name' needs to be provided to unload a LoRA adapter.")
		return
	}
	s.loraMu.Lock()
	defer s.loraMu.Unlock()
	old := s.models.Load()
	if m := old.byName[req.LoRAName]; m == nil || m.parent == "" {
		vllmError(ctx, 404, "NotFoundError", fmt.Sprintf("The lora adapter '%s' cannot be found.", req.LoRAName))
		return
	}
	t := &modelTable{byName: make(map[string]*model, len(old.byName))}
	for _, m := range old.order {
		if m.name != req.LoRAName {
			t.add(m)
		}
	}
	s.models.Store(t)
	s.log.Info("lora adapter unloaded", "lora_name", req.LoRAName)
	ctx.SetStatusCode(200)
	ctx.SetBodyString(fmt.Sprintf("Success: LoRA adapter '%s' removed successfully.", req.LoRAName))
}
