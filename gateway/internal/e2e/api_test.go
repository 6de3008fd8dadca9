package e2e

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestOpenAIEndpoints(t *testing.T) {
	e := newEnv(t, false)
	e.sim("sim-a")
	gw, url := e.gateway()
	key := e.key(url, nil)

	chat := `{"model":"sim-chat","messages":[{"role":"user","content":"Hello there, how are you?"}],"max_tokens":12,"seed":7,"top_k":3}`

	t.Run("chat", func(t *testing.T) {
		st, hdr, body := post(t, url+"/v1/chat/completions", key, chat, "X-Request-Id", "e2e-chat-1")
		if st != 200 {
			t.Fatalf("status %d: %s", st, body)
		}
		// The response carries the gateway's own id; the client's is kept in the ledger.
		if id := hdr.Get("X-Request-Id"); id == "" || id == "e2e-chat-1" {
			t.Errorf("X-Request-Id = %q, want the gateway's own id", id)
		}
		var out struct {
			Object string    `json:"object"`
			Usage  usageJSON `json:"usage"`
		}
		if err := json.Unmarshal(body, &out); err != nil || out.Object != "chat.completion" {
			t.Fatalf("bad body %s (%v)", body, err)
		}
		r := e.waitRecord("e2e-chat-1")
		want := record{Status: 200, Prompt: out.Usage.PromptTokens, Completion: out.Usage.CompletionTokens, Model: "sim-chat", Backend: "sim-a"}
		if diff := cmp.Diff(want, r); diff != "" {
			t.Errorf("ledger (-want +got):\n%s", diff)
		}
	})

	t.Run("stream without include_usage", func(t *testing.T) {
		_, _, plain := post(t, url+"/v1/chat/completions", key, chat)
		var ref struct {
			Usage usageJSON `json:"usage"`
		}
		if err := json.Unmarshal(plain, &ref); err != nil {
			t.Fatal(err)
		}
		body := strings.Replace(chat, `"max_tokens":12`, `"max_tokens":12,"stream":true`, 1)
		st, hdr, raw := post(t, url+"/v1/chat/completions", key, body, "X-Request-Id", "e2e-stream-1")
		if st != 200 || !strings.HasPrefix(hdr.Get("Content-Type"), "text/event-stream") {
			t.Fatalf("status %d %s: %s", st, hdr.Get("Content-Type"), raw)
		}
		evs := events(t, raw)
		if len(evs) < 3 || evs[len(evs)-1] != "[DONE]" {
			t.Fatalf("events %q", evs)
		}
		for _, ev := range evs {
			if strings.Contains(ev, `"usage":{`) {
				t.Errorf("injected usage chunk reached the client: %s", ev)
			}
		}
		r := e.waitRecord("e2e-stream-1")
		want := record{Status: 200, Prompt: ref.Usage.PromptTokens, Completion: ref.Usage.CompletionTokens, Streamed: true,
			Model: "sim-chat", Backend: "sim-a", HasTTFT: true}
		if diff := cmp.Diff(want, r); diff != "" {
			t.Errorf("ledger (-want +got):\n%s", diff)
		}
	})

	t.Run("stream with include_usage", func(t *testing.T) {
		body := strings.Replace(chat, `"max_tokens":12`, `"max_tokens":12,"stream":true,"stream_options":{"include_usage":true}`, 1)
		st, _, raw := post(t, url+"/v1/chat/completions", key, body, "X-Request-Id", "e2e-stream-2")
		if st != 200 {
			t.Fatalf("status %d: %s", st, raw)
		}
		evs := events(t, raw)
		var last struct {
			Choices []any     `json:"choices"`
			Usage   usageJSON `json:"usage"`
		}
		if err := json.Unmarshal([]byte(evs[len(evs)-2]), &last); err != nil || len(last.Choices) != 0 || last.Usage.CompletionTokens == 0 {
			t.Fatalf("usage chunk missing: %q (%v)", evs[len(evs)-2], err)
		}
		r := e.waitRecord("e2e-stream-2")
		if r.Prompt != last.Usage.PromptTokens || r.Completion != last.Usage.CompletionTokens || r.Estimated {
			t.Errorf("ledger %+v, simulator usage %+v", r, last.Usage)
		}
	})

	t.Run("completions", func(t *testing.T) {
		st, _, body := post(t, url+"/v1/completions", key, `{"model":"sim-chat","prompt":"Once upon a time","max_tokens":5}`, "X-Request-Id", "e2e-comp-1")
		if st != 200 {
			t.Fatalf("status %d: %s", st, body)
		}
		var out struct {
			Usage usageJSON `json:"usage"`
		}
		_ = json.Unmarshal(body, &out)
		r := e.waitRecord("e2e-comp-1")
		if r.Prompt != out.Usage.PromptTokens || r.Completion != out.Usage.CompletionTokens || r.Completion == 0 {
			t.Errorf("ledger %+v, simulator usage %+v", r, out.Usage)
		}
	})

	t.Run("embeddings", func(t *testing.T) {
		st, _, body := post(t, url+"/v1/embeddings", key, `{"model":"sim-embedding","input":["a b c","d e"]}`, "X-Request-Id", "e2e-emb-1")
		if st != 200 {
			t.Fatalf("status %d: %s", st, body)
		}
		var out struct {
			Data  []any     `json:"data"`
			Usage usageJSON `json:"usage"`
		}
		_ = json.Unmarshal(body, &out)
		if len(out.Data) != 2 {
			t.Errorf("data %d", len(out.Data))
		}
		r := e.waitRecord("e2e-emb-1")
		if r.Prompt != out.Usage.PromptTokens || r.Prompt == 0 {
			t.Errorf("ledger %+v, simulator usage %+v", r, out.Usage)
		}
	})

	t.Run("models", func(t *testing.T) {
		req, _ := http.NewRequest("GET", url+"/v1/models", nil)
		req.Header.Set("Authorization", "Bearer "+key)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var out struct {
			Object string `json:"object"`
			Data   []struct {
				ID     string `json:"id"`
				Object string `json:"object"`
			} `json:"data"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, d := range out.Data {
			ids = append(ids, d.ID)
		}
		if diff := cmp.Diff([]string{"sim-chat", "sim-embedding"}, ids); diff != "" || out.Object != "list" {
			t.Errorf("models (-want +got):\n%s", diff)
		}
	})

	t.Run("retrieve model", func(t *testing.T) {
		get := func(path, token string) (int, map[string]any) {
			req, _ := http.NewRequest("GET", url+path, nil)
			if token != "" {
				req.Header.Set("Authorization", "Bearer "+token)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var out map[string]any
			_ = json.NewDecoder(resp.Body).Decode(&out)
			return resp.StatusCode, out
		}
		status, m := get("/v1/models/sim-chat", key)
		if status != 200 || m["id"] != "sim-chat" || m["object"] != "model" {
			t.Errorf("GET /v1/models/sim-chat: %d %v", status, m)
		}
		status, m = get("/v1/models/no-such-model", key)
		if errObj, _ := m["error"].(map[string]any); status != 404 || errObj["code"] != "model_not_found" {
			t.Errorf("unknown model: %d %v", status, m)
		}
		if status, _ := get("/v1/models/sim-chat", ""); status != 401 {
			t.Errorf("no key: status %d, want 401", status)
		}
	})

	if v, ok := metric(t, url, "maas_usage_records_dropped_total"); !ok || v != 0 {
		t.Errorf("maas_usage_records_dropped_total = %v (present %v)", v, ok)
	}
	_ = gw
}
