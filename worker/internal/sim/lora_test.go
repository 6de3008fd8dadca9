package sim

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// peftDir makes a directory in the PEFT adapter layout (adapter_config.json).
func peftDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "adapter_config.json"), []byte(`{"peft_type":"LORA","r":8}`), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

func quote(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// vllmErr is vLLM's error body.
type vllmErr struct {
	Error struct {
		Message string  `json:"message"`
		Type    string  `json:"type"`
		Param   *string `json:"param"`
		Code    int     `json:"code"`
	} `json:"error"`
}

func decodeErr(t *testing.T, b []byte) vllmErr {
	t.Helper()
	var e vllmErr
	if err := json.Unmarshal(b, &e); err != nil {
		t.Fatalf("error body %s: %v", b, err)
	}
	return e
}

func TestLoRAAnswersLikeVLLM(t *testing.T) {
	s := start(t, nil)
	dir := peftDir(t)
	empty := t.TempDir()
	tests := []struct {
		name, path, body string
		status           int
		typ, msg         string
	}{
		{"missing path", "/v1/load_lora_adapter", `{"lora_name":"a"}`, 400, "InvalidUserInput", "Both 'lora_name' and 'lora_path' must be provided."},
		{"not a PEFT adapter", "/v1/load_lora_adapter", `{"lora_name":"a","lora_path":` + quote(empty) + `}`, 404, "NotFoundError",
			"Loading lora a failed: No adapter found for " + empty},
		{"no such path", "/v1/load_lora_adapter", `{"lora_name":"a","lora_path":"/nonexistent/adapter"}`, 404, "NotFoundError",
			"Loading lora a failed: No adapter found for /nonexistent/adapter"},
		{"load", "/v1/load_lora_adapter", `{"lora_name":"a","lora_path":` + quote(dir) + `}`, 200, "", "Success: LoRA adapter 'a' added successfully."},
		{"again", "/v1/load_lora_adapter", `{"lora_name":"a","lora_path":` + quote(dir) + `}`, 400, "InvalidUserInput",
			"The lora adapter 'a' has already been loaded. If you want to load the adapter in place, set 'load_inplace' to True."},
		{"in place", "/v1/load_lora_adapter", `{"lora_name":"a","lora_path":` + quote(dir) + `,"load_inplace":true}`, 200, "", "Success: LoRA adapter 'a' added successfully."},
		{"base model name", "/v1/load_lora_adapter", `{"lora_name":"sim-chat","lora_path":` + quote(dir) + `}`, 400, "InvalidUserInput",
			"The lora adapter 'sim-chat' has the name of a served base model."},
		{"unload without name", "/v1/unload_lora_adapter", `{}`, 400, "InvalidUserInput", "'lora_name' needs to be provided to unload a LoRA adapter."},
		{"unload", "/v1/unload_lora_adapter", `{"lora_name":"a"}`, 200, "", "Success: LoRA adapter 'a' removed successfully."},
		{"unload again", "/v1/unload_lora_adapter", `{"lora_name":"a"}`, 404, "NotFoundError", "The lora adapter 'a' cannot be found."},
	}
	for _, tt := range tests {
		resp, b := post(t, s, tt.path, tt.body)
		if resp.StatusCode != tt.status {
			t.Fatalf("%s: status %d, want %d (%s)", tt.name, resp.StatusCode, tt.status, b)
		}
		if tt.status == 200 {
			if string(b) != tt.msg {
				t.Errorf("%s: body %q, want %q", tt.name, b, tt.msg)
			}
			continue
		}
		e := decodeErr(t, b)
		if e.Error.Type != tt.typ || e.Error.Message != tt.msg || e.Error.Code != tt.status || e.Error.Param != nil {
			t.Errorf("%s: error %+v", tt.name, e.Error)
		}
	}
}

func TestLoRASlots(t *testing.T) {
	s := start(t, func(o *Options) { o.MaxLoRAs = 2 })
	dir := peftDir(t)
	for _, n := range []string{"a", "b"} {
		if resp, b := post(t, s, "/v1/load_lora_adapter", `{"lora_name":"`+n+`","lora_path":`+quote(dir)+`}`); resp.StatusCode != 200 {
			t.Fatalf("load %s: %d %s", n, resp.StatusCode, b)
		}
	}
	resp, b := post(t, s, "/v1/load_lora_adapter", `{"lora_name":"c","lora_path":`+quote(dir)+`}`)
	if resp.StatusCode != 400 || !strings.Contains(decodeErr(t, b).Error.Message, "all 2 LoRA slots are in use") {
		t.Fatalf("third load: %d %s", resp.StatusCode, b)
	}
	// Reloading one in place takes no new slot.
	if resp, b := post(t, s, "/v1/load_lora_adapter", `{"lora_name":"b","lora_path":`+quote(dir)+`,"load_inplace":true}`); resp.StatusCode != 200 {
		t.Fatalf("in place: %d %s", resp.StatusCode, b)
	}
	if resp, b := post(t, s, "/v1/unload_lora_adapter", `{"lora_name":"a"}`); resp.StatusCode != 200 {
		t.Fatalf("unload: %d %s", resp.StatusCode, b)
	}
	if resp, b := post(t, s, "/v1/load_lora_adapter", `{"lora_name":"c","lora_path":`+quote(dir)+`}`); resp.StatusCode != 200 {
		t.Fatalf("load after unload: %d %s", resp.StatusCode, b)
	}
	if diff := cmp.Diff([]string{"b", "c"}, s.LoRAs()); diff != "" {
		t.Errorf("LoRAs (-want +got):\n%s", diff)
	}
	if s.MaxLoRAs() != 2 {
		t.Errorf("MaxLoRAs %d", s.MaxLoRAs())
	}
}

func TestLoRAServedUnderItsName(t *testing.T) {
	s := start(t, nil)
	dir := peftDir(t)
	req := `{"model":"ft:sim-chat:x:ftjob-1","messages":[{"role":"user","content":"hello"}],"max_tokens":3}`
	resp, b := post(t, s, "/v1/chat/completions", req)
	if resp.StatusCode != 404 || !strings.Contains(string(b), "The model `ft:sim-chat:x:ftjob-1` does not exist.") {
		t.Fatalf("before load: %d %s", resp.StatusCode, b)
	}
	if resp, b := post(t, s, "/v1/load_lora_adapter", `{"lora_name":"ft:sim-chat:x:ftjob-1","lora_path":`+quote(dir)+`}`); resp.StatusCode != 200 {
		t.Fatalf("load: %d %s", resp.StatusCode, b)
	}
	resp, b = post(t, s, "/v1/chat/completions", req)
	var out struct {
		Model string `json:"model"`
		Usage struct {
			CompletionTokens int `json:"completion_tokens"`
		} `json:"usage"`
	}
	if resp.StatusCode != 200 || json.Unmarshal(b, &out) != nil || out.Model != "ft:sim-chat:x:ftjob-1" || out.Usage.CompletionTokens != 3 {
		t.Fatalf("after load: %d %s", resp.StatusCode, b)
	}
}

func TestLoRARoutesNeedRuntimeUpdating(t *testing.T) {
	s := start(t, func(o *Options) { o.RuntimeLoRAUpdating = false })
	for _, p := range []string{"/v1/load_lora_adapter", "/v1/unload_lora_adapter"} {
		resp, b := post(t, s, p, `{"lora_name":"a","lora_path":"/x"}`)
		if resp.StatusCode != 404 || string(b) != `{"detail":"Not Found"}` {
			t.Errorf("%s: %d %s", p, resp.StatusCode, b)
		}
	}
}
