package sim

import (
	"encoding/json"
	"fmt"

	"github.com/valyala/fasthttp"

	"github.com/maas-platform/maas/pkg/apierr"
	"github.com/maas-platform/maas/pkg/openai"
)

func (s *Sim) describe(m *model) openai.Model {
	out := openai.Model{ID: m.name, Object: openai.ObjectModel, Created: m.created, OwnedBy: OwnedBy,
		Root: m.root, MaxModelLen: s.o.MaxModelLen}
	if m.parent != "" {
		p := m.parent
		out.Parent = &p
	}
	return out
}

func (s *Sim) listModels(ctx *fasthttp.RequestCtx) {
	t := s.models.Load()
	list := openai.ModelList{Object: openai.ObjectList, Data: make([]openai.Model, 0, len(t.order))}
	for _, m := range t.order {
		list.Data = append(list.Data, s.describe(m))
	}
	writeJSON(ctx, 200, list)
}

func (s *Sim) getModel(ctx *fasthttp.RequestCtx, name string) {
	m := s.models.Load().byName[name]
	if m == nil {
		apierr.WriteFast(ctx, &apierr.Error{Kind: apierr.NotFound, Code: "model_not_found", Message: "The model `" + name + "` does not exist."})
		return
	}
	writeJSON(ctx, 200, s.describe(m))
}

func writeJSON(ctx *fasthttp.RequestCtx, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		apierr.WriteFast(ctx, apierr.Wrap(err, "marshal response"))
		return
	}
	ctx.Response.Header.SetContentType("application/json")
	ctx.SetStatusCode(status)
	ctx.SetBody(b)
}

// loraRequest is the body of vLLM's /v1/load_lora_adapter and /v1/unload_lora_adapter.
type loraRequest struct {
	LoRAName      string `json:"lora_name"`
	LoRAPath      string `json:"lora_path"`
	BaseModelName string `json:"base_model_name"`
}

// loadLoRA adds a LoRA adapter served under its name, as vLLM does with
// VLLM_ALLOW_RUNTIME_LORA_UPDATING. The path is only recorded (as the model's root).
func (s *Sim) loadLoRA(ctx *fasthttp.RequestCtx) {
	var req loraRequest
	if err := json.Unmarshal(ctx.PostBody(), &req); err != nil {
		apierr.WriteFast(ctx, badJSON(err))
		return
	}
	if req.LoRAName == "" || req.LoRAPath == "" {
		apierr.WriteFast(ctx, apierr.New(apierr.InvalidRequest, "Both 'lora_name' and 'lora_path' must be provided."))
		return
	}
	s.loraMu.Lock()
	defer s.loraMu.Unlock()
	old := s.models.Load()
	if _, ok := old.byName[req.LoRAName]; ok {
		apierr.WriteFast(ctx, apierr.New(apierr.InvalidRequest, "The lora adapter '%s' has already been loaded.", req.LoRAName))
		return
	}
	base := req.BaseModelName
	if base == "" {
		if len(s.o.ChatModels) == 0 {
			apierr.WriteFast(ctx, apierr.New(apierr.InvalidRequest, "no base model to attach a LoRA adapter to"))
			return
		}
		base = s.o.ChatModels[0]
	}
	if bm := old.byName[base]; bm == nil || bm.embedding || bm.parent != "" {
		apierr.WriteFast(ctx, apierr.Param("base_model_name", "base model %q is not a served chat model", base))
		return
	}
	t := &modelTable{byName: make(map[string]*model, len(old.byName)+1), order: append([]*model(nil), old.order...)}
	for k, v := range old.byName {
		t.byName[k] = v
	}
	t.add(s.newModel(req.LoRAName, false, base, req.LoRAPath))
	s.models.Store(t)
	s.log.Info("lora adapter loaded", "lora_name", req.LoRAName, "base_model", base)
	ctx.Response.Header.SetContentType("text/plain; charset=utf-8")
	ctx.SetBodyString(fmt.Sprintf("Success: LoRA adapter '%s' added successfully.", req.LoRAName))
}

func (s *Sim) unloadLoRA(ctx *fasthttp.RequestCtx) {
	var req loraRequest
	if err := json.Unmarshal(ctx.PostBody(), &req); err != nil {
		apierr.WriteFast(ctx, badJSON(err))
		return
	}
	if req.LoRAName == "" {
		apierr.WriteFast(ctx, apierr.New(apierr.InvalidRequest, "'lora_name' needs to be provided to unload a LoRA adapter."))
		return
	}
	s.loraMu.Lock()
	defer s.loraMu.Unlock()
	old := s.models.Load()
	if m := old.byName[req.LoRAName]; m == nil || m.parent == "" {
		apierr.WriteFast(ctx, &apierr.Error{Kind: apierr.NotFound, Message: fmt.Sprintf("The lora adapter '%s' cannot be found.", req.LoRAName)})
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
	ctx.Response.Header.SetContentType("text/plain; charset=utf-8")
	ctx.SetBodyString(fmt.Sprintf("Success: LoRA adapter '%s' removed successfully.", req.LoRAName))
}
