package engine

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/maas-platform/maas/pkg/openai"
)

// LoRAAPI describes how an engine kind loads and unloads LoRA adapters at run time. A nil
// Adapter.LoRA means the engine kind cannot (TGI, llama.cpp's server, Ollama, a remote
// OpenAI-compatible API): the worker reports 0 adapter slots and control places nothing on it.
type LoRAAPI struct {
	LoadPath   string // POST {"lora_name", "lora_path"}
	UnloadPath string // POST {"lora_name"}
	// Answer reads the engine's answer to a load (load true) or unload: nil on success,
	// ErrLoRALoaded / ErrLoRANotLoaded / ErrLoRAPathNotFound when the engine says so, another
	// error otherwise.
	Answer func(load bool, status int, body []byte) error
	// SlotArgs reads from the engine's command line how many adapters it keeps loaded, and
	// the flag it came from; 0 when LoRA is not enabled in it.
	SlotArgs func(args []string) (int, string)
	// SlotsName names the setting for messages ("--max-loras").
	SlotsName string
}

// Errors of an engine's LoRA API.
var (
	ErrNoLoRA           = errors.New("engine cannot load LoRA adapters at run time")
	ErrLoRALoaded       = errors.New("LoRA adapter already loaded")
	ErrLoRANotLoaded    = errors.New("LoRA adapter not loaded")
	ErrLoRAPathNotFound = errors.New("no LoRA adapter at the path")
)

// SlotsFromCommand returns the adapter slots the engine's command line sets (0 when the
// engine kind has no LoRA API or the command does not enable it) and where it came from.
func (a Adapter) SlotsFromCommand(cmd string) (int, string) {
	if a.LoRA == nil || a.LoRA.SlotArgs == nil || cmd == "" {
		return 0, ""
	}
	n, src := a.LoRA.SlotArgs(strings.Fields(cmd))
	if n <= 0 {
		return 0, ""
	}
	return n, src + " in MAAS_ENGINE_CMD"
}

// LoRAs returns the LoRA adapters the engine lists in /v1/models (entries with a parent, as
// vLLM lists them), by name with their path (root); empty for an engine that lists none.
func (c *Client) LoRAs(ctx context.Context) (map[string]string, error) {
	resp, err := c.get(ctx, "/v1/models")
	if err != nil {
		return nil, fmt.Errorf("list LoRA adapters: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("list LoRA adapters: status %d", resp.StatusCode)
	}
	var l openai.ModelList
	if err := json.NewDecoder(io.LimitReader(resp.Body, 8<<20)).Decode(&l); err != nil {
		return nil, fmt.Errorf("list LoRA adapters: decode: %w", err)
	}
	out := map[string]string{}
	for _, m := range l.Data {
		if m.Parent != nil {
			out[m.ID] = m.Root
		}
	}
	return out, nil
}

// LoadLoRA loads the PEFT adapter at path (on the engine's file system) under name.
func (c *Client) LoadLoRA(ctx context.Context, name, path string) error {
	if c.Adapter.LoRA == nil {
		return ErrNoLoRA
	}
	return c.lora(ctx, true, c.Adapter.LoRA.LoadPath, map[string]string{"lora_name": name, "lora_path": path})
}

// UnloadLoRA unloads adapter name.
func (c *Client) UnloadLoRA(ctx context.Context, name string) error {
	if c.Adapter.LoRA == nil {
		return ErrNoLoRA
	}
	return c.lora(ctx, false, c.Adapter.LoRA.UnloadPath, map[string]string{"lora_name": name})
}

func (c *Client) lora(ctx context.Context, load bool, path string, body map[string]string) error {
	what := "unload"
	if load {
		what = "load"
	}
	b, _ := json.Marshal(body)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.BaseURL+path, bytes.NewReader(b))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	// Loading reads the adapter's weights: longer than the client's probe timeout. The
	// caller's ctx bounds it (the sidecar's adapter syncer gives each call 5 minutes).
	hc := *c.HTTP
	hc.Timeout = 0
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("%s LoRA adapter %s: %w", what, body["lora_name"], err)
	}
	defer resp.Body.Close()
	rb, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err := c.Adapter.LoRA.Answer(load, resp.StatusCode, rb); err != nil {
		return fmt.Errorf("%s LoRA adapter %s: %w", what, body["lora_name"], err)
	}
	return nil
}

// VLLMAnswer reads vLLM's answers: 200 with a text on success; an error body
// {"error": {"message", "type", "code"}} (older versions: {"message", "type", "code"} at the
// top level) with 400 "… has already been loaded …", 404 NotFoundError "… cannot be found."
// (unload) or "… No adapter found for …" (load). A 404 {"detail":"Not Found"} means the
// route is absent: vLLM was started without VLLM_ALLOW_RUNTIME_LORA_UPDATING=True.
func VLLMAnswer(load bool, status int, body []byte) error {
	if status == http.StatusOK {
		return nil
	}
	var e struct {
		Error struct {
			Message string `json:"message"`
		} `json:"error"`
		Message string `json:"message"`
		Detail  string `json:"detail"`
	}
	_ = json.Unmarshal(body, &e)
	msg := e.Error.Message
	if msg == "" {
		msg = e.Message
	}
	switch {
	case status == http.StatusNotFound && msg == "":
		return fmt.Errorf("%w: the engine has no runtime LoRA API (vLLM needs VLLM_ALLOW_RUNTIME_LORA_UPDATING=True and --enable-lora)", ErrNoLoRA)
	case load && strings.Contains(msg, "has already been loaded"):
		return fmt.Errorf("%w: %s", ErrLoRALoaded, msg)
	case load && status == http.StatusNotFound:
		return fmt.Errorf("%w: %s", ErrLoRAPathNotFound, msg)
	case !load && status == http.StatusNotFound:
		return fmt.Errorf("%w: %s", ErrLoRANotLoaded, msg)
	case msg != "":
		return fmt.Errorf("status %d: %s", status, msg)
	}
	return fmt.Errorf("status %d: %.200s", status, body)
}
