package sim

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"math"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/maas-platform/maas/pkg/openai"
)

// start runs a simulator on a free loopback port for the test.
func start(t *testing.T, mod func(*Options)) *Sim {
	t.Helper()
	return startWith(t, mod, nil)
}

// startWith is start with the listener wrapped by wrap (when not nil).
func startWith(t *testing.T, mod func(*Options), wrap func(net.Listener) net.Listener) *Sim {
	t.Helper()
	o := DefaultOptions()
	o.Addr = "127.0.0.1:0"
	if mod != nil {
		mod(&o)
	}
	s, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Listen(); err != nil {
		t.Fatal(err)
	}
	if wrap != nil {
		s.ln = wrap(s.ln)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve() }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.Stop(ctx); err != nil {
			t.Errorf("stop: %v", err)
		}
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return s
}

var client = &http.Client{Timeout: 10 * time.Second}

func post(t *testing.T, s *Sim, path, body string, header ...string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest("POST", s.URL()+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("POST %s: read: %v", path, err)
	}
	return resp, b
}

// strict decodes b into v refusing unknown fields: the answer has exactly OpenAI's fields.
func strict(t *testing.T, b []byte, v any) {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		t.Fatalf("decode %s: %v", b, err)
	}
}

// keys returns the top-level keys of a JSON object, to check required keys are present
// (even when null).
func keys(t *testing.T, b []byte) map[string]json.RawMessage {
	t.Helper()
	var m map[string]json.RawMessage
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("not a JSON object: %s", b)
	}
	return m
}

func TestChatCompletion(t *testing.T) {
	s := start(t, nil)
	tests := []struct {
		name       string
		body       string
		wantN      int
		wantFinish string
		choices    int
	}{
		{"default length", `{"model":"sim-chat","messages":[{"role":"user","content":"Hello, world!"}]}`, 16, "stop", 1},
		{"max_tokens cuts", `{"model":"sim-chat","messages":[{"role":"user","content":"Hello"}],"max_tokens":5}`, 5, "length", 1},
		{"max_completion_tokens wins", `{"model":"sim-chat","messages":[{"role":"user","content":"Hello"}],"max_tokens":5,"max_completion_tokens":3}`, 3, "length", 1},
		{"max_tokens above length", `{"model":"sim-chat","messages":[{"role":"user","content":"Hello"}],"max_tokens":100}`, 16, "stop", 1},
		{"ignore_eos", `{"model":"sim-chat","messages":[{"role":"user","content":"Hello"}],"max_tokens":40,"ignore_eos":true}`, 40, "length", 1},
		{"n choices", `{"model":"sim-chat","messages":[{"role":"user","content":"Hello"}],"max_tokens":4,"n":3}`, 4, "length", 3},
		{"content parts", `{"model":"sim-chat","messages":[{"role":"user","content":[{"type":"text","text":"Hello, world!"}]}]}`, 16, "stop", 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, b := post(t, s, "/v1/chat/completions", tt.body)
			if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/json" {
				t.Fatalf("status %d %q: %s", resp.StatusCode, resp.Header.Get("Content-Type"), b)
			}
			var c openai.ChatCompletion
			strict(t, b, &c)
			k := keys(t, b)
			for _, key := range []string{"id", "object", "created", "model", "choices", "usage"} {
				if _, ok := k[key]; !ok {
					t.Errorf("missing key %q", key)
				}
			}
			if c.Object != "chat.completion" || !strings.HasPrefix(c.ID, "chatcmpl-") || c.Model != "sim-chat" || c.Created == 0 {
				t.Errorf("header fields: %+v", c)
			}
			if len(c.Choices) != tt.choices {
				t.Fatalf("%d choices, want %d", len(c.Choices), tt.choices)
			}
			total := 0
			for i, ch := range c.Choices {
				if ch.Index != i || ch.Message.Role != "assistant" || ch.FinishReason != tt.wantFinish || string(ch.Logprobs) != "null" {
					t.Errorf("choice %d: %+v", i, ch)
				}
				if n := Tokens(ch.Message.Content.String()); n != tt.wantN {
					t.Errorf("choice %d has %d tokens, want %d", i, n, tt.wantN)
				}
				total += Tokens(ch.Message.Content.String())
			}
			if c.Usage == nil || c.Usage.CompletionTokens != total || c.Usage.TotalTokens != c.Usage.PromptTokens+total || c.Usage.PromptTokens == 0 {
				t.Errorf("usage %+v, completion tokens counted %d", c.Usage, total)
			}
		})
	}
}

func TestChatPromptTokens(t *testing.T) {
	s := start(t, nil)
	// 2 + (4 + 3 tokens "Hello, world") + (4 + 1 "Hi") ... see the package doc.
	_, b := post(t, s, "/v1/chat/completions", `{"model":"sim-chat","messages":[{"role":"system","content":"Hello, world"},{"role":"user","content":"Hi"}]}`)
	var c openai.ChatCompletion
	strict(t, b, &c)
	if want := 2 + 4 + 3 + 4 + 1; c.Usage.PromptTokens != want {
		t.Errorf("prompt tokens %d, want %d", c.Usage.PromptTokens, want)
	}
	// Same request, same answer.
	_, b2 := post(t, s, "/v1/chat/completions", `{"model":"sim-chat","messages":[{"role":"system","content":"Hello, world"},{"role":"user","content":"Hi"}]}`)
	var c2 openai.ChatCompletion
	strict(t, b2, &c2)
	if c.Choices[0].Message.Content.String() != c2.Choices[0].Message.Content.String() {
		t.Error("answers differ for the same prompt")
	}
}

func TestOutputDistribution(t *testing.T) {
	s := start(t, func(o *Options) { o.OutputTokens = Dist{Min: 3, Max: 9} })
	seen := map[int]bool{}
	for i := 0; i < 40; i++ {
		_, b := post(t, s, "/v1/chat/completions", `{"model":"sim-chat","messages":[{"role":"user","content":"prompt `+strings.Repeat("x", i)+`"}]}`)
		var c openai.ChatCompletion
		strict(t, b, &c)
		n := c.Usage.CompletionTokens
		if n < 3 || n > 9 || c.Choices[0].FinishReason != "stop" {
			t.Fatalf("length %d finish %q outside 3..9/stop", n, c.Choices[0].FinishReason)
		}
		seen[n] = true
	}
	if len(seen) < 3 {
		t.Errorf("lengths barely vary: %v", seen)
	}
}

// readStream reads an SSE body into its data payloads; the last must be [DONE].
func readStream(t *testing.T, b []byte) [][]byte {
	t.Helper()
	r := openai.NewReader(bytes.NewReader(b))
	var out [][]byte
	for {
		ev, err := r.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("read stream: %v\n%s", err, b)
		}
		out = append(out, append([]byte(nil), ev.Data...))
	}
	if len(out) == 0 || !openai.IsDone(out[len(out)-1]) {
		t.Fatalf("stream does not end with [DONE]:\n%s", b)
	}
	return out[:len(out)-1]
}

func TestChatStream(t *testing.T) {
	s := start(t, nil)
	for _, usage := range []bool{false, true} {
		t.Run(map[bool]string{false: "no usage", true: "include_usage"}[usage], func(t *testing.T) {
			body := `{"model":"sim-chat","messages":[{"role":"user","content":"Hello"}],"max_tokens":4,"n":2,"stream":true`
			if usage {
				body += `,"stream_options":{"include_usage":true}`
			}
			resp, b := post(t, s, "/v1/chat/completions", body+"}")
			if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
				t.Fatalf("status %d %q", resp.StatusCode, resp.Header.Get("Content-Type"))
			}
			events := readStream(t, b)
			text := map[int]string{}
			finish := map[int]string{}
			var gotUsage *openai.Usage
			id := ""
			for i, data := range events {
				var c openai.ChatCompletionChunk
				strict(t, data, &c)
				k := keys(t, data)
				if _, ok := k["usage"]; ok != usage {
					t.Errorf("event %d: usage key present=%v, want %v", i, ok, usage)
				}
				if c.Object != "chat.completion.chunk" || c.Model != "sim-chat" {
					t.Errorf("event %d: %s", i, data)
				}
				if id == "" {
					id = c.ID
				} else if c.ID != id {
					t.Errorf("event %d: id changed", i)
				}
				if c.Usage != nil {
					if i != len(events)-1 || len(c.Choices) != 0 || !strings.Contains(string(data), `"choices":[]`) {
						t.Errorf("usage chunk must be last with empty choices: %s", data)
					}
					gotUsage = c.Usage
					continue
				}
				if len(c.Choices) != 1 {
					t.Fatalf("event %d: %d choices", i, len(c.Choices))
				}
				ch := c.Choices[0]
				if !strings.Contains(string(data), `"finish_reason":`) {
					t.Errorf("finish_reason key missing: %s", data)
				}
				if ch.Delta.Content != nil {
					text[ch.Index] += *ch.Delta.Content
				}
				if ch.FinishReason != nil {
					if finish[ch.Index] != "" {
						t.Errorf("choice %d finished twice", ch.Index)
					}
					finish[ch.Index] = *ch.FinishReason
				} else if finish[ch.Index] != "" {
					t.Errorf("choice %d got a chunk after finishing", ch.Index)
				}
			}
			if diff := cmp.Diff(map[int]string{0: "length", 1: "length"}, finish); diff != "" {
				t.Errorf("finish reasons (-want +got):\n%s", diff)
			}
			for i := 0; i < 2; i++ {
				if n := Tokens(text[i]); n != 4 {
					t.Errorf("choice %d: %d tokens in %q", i, n, text[i])
				}
			}
			if usage != (gotUsage != nil) {
				t.Fatalf("usage chunk present=%v, want %v", gotUsage != nil, usage)
			}
			if usage && (gotUsage.CompletionTokens != 8 || gotUsage.PromptTokens != 7 || gotUsage.TotalTokens != 15) {
				t.Errorf("usage %+v", gotUsage)
			}
		})
	}
}

func TestCompletions(t *testing.T) {
	s := start(t, nil)
	tests := []struct {
		name       string
		body       string
		choices    int
		prompt     int
		completion int
	}{
		{"string", `{"model":"sim-chat","prompt":"Once upon a time","max_tokens":7}`, 1, 4, 7},
		{"batch", `{"model":"sim-chat","prompt":["a b","c"],"max_tokens":2,"n":2}`, 4, 3, 8},
		{"token ids", `{"model":"sim-chat","prompt":[1,2,3,4,5],"max_tokens":3}`, 1, 5, 3},
		{"echo", `{"model":"sim-chat","prompt":"Say","max_tokens":2,"echo":true}`, 1, 1, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, b := post(t, s, "/v1/completions", tt.body)
			if resp.StatusCode != 200 {
				t.Fatalf("status %d: %s", resp.StatusCode, b)
			}
			var c openai.Completion
			strict(t, b, &c)
			if c.Object != "text_completion" || !strings.HasPrefix(c.ID, "cmpl-") || len(c.Choices) != tt.choices {
				t.Fatalf("answer %s", b)
			}
			for i, ch := range c.Choices {
				if ch.Index != i || ch.FinishReason == nil || *ch.FinishReason != "length" {
					t.Errorf("choice %d: %+v", i, ch)
				}
			}
			if c.Usage == nil || c.Usage.PromptTokens != tt.prompt || c.Usage.CompletionTokens != tt.completion || c.Usage.TotalTokens != tt.prompt+tt.completion {
				t.Errorf("usage %+v", c.Usage)
			}
			if tt.name == "echo" && !strings.HasPrefix(c.Choices[0].Text, "Say ") {
				t.Errorf("echo missing: %q", c.Choices[0].Text)
			}
		})
	}
	t.Run("stream", func(t *testing.T) {
		_, b := post(t, s, "/v1/completions", `{"model":"sim-chat","prompt":"Once","max_tokens":3,"stream":true,"stream_options":{"include_usage":true}}`)
		events := readStream(t, b)
		text := ""
		var fin string
		for i, data := range events {
			var c openai.Completion
			strict(t, data, &c)
			if c.Object != "text_completion" {
				t.Errorf("object %q", c.Object)
			}
			if i == len(events)-1 {
				if c.Usage == nil || len(c.Choices) != 0 || c.Usage.CompletionTokens != 3 || c.Usage.PromptTokens != 1 {
					t.Errorf("usage chunk %s", data)
				}
				continue
			}
			text += c.Choices[0].Text
			if c.Choices[0].FinishReason != nil {
				fin = *c.Choices[0].FinishReason
			}
		}
		if Tokens(text) != 3 || fin != "length" {
			t.Errorf("text %q finish %q", text, fin)
		}
	})
}

func cosine(a, b []float32) float64 {
	var dot, na, nb float64
	for i := range a {
		dot += float64(a[i]) * float64(b[i])
		na += float64(a[i]) * float64(a[i])
		nb += float64(b[i]) * float64(b[i])
	}
	return dot / math.Sqrt(na*nb)
}

func TestEmbeddings(t *testing.T) {
	s := start(t, nil)
	body := `{"model":"sim-embedding","input":["the cat sat on the mat","a cat sat on a mat","quarterly revenue grew strongly"]}`
	_, b := post(t, s, "/v1/embeddings", body)
	var e openai.EmbeddingResponse
	strict(t, b, &e)
	if e.Object != "list" || e.Model != "sim-embedding" || len(e.Data) != 3 {
		t.Fatalf("answer %s", b)
	}
	if want := 6 + 6 + 4; e.Usage.PromptTokens != want || e.Usage.TotalTokens != want {
		t.Errorf("usage %+v, want %d", e.Usage, want)
	}
	for i, d := range e.Data {
		if d.Object != "embedding" || d.Index != i || len(d.Embedding.Float) != 384 {
			t.Errorf("item %d: object %q index %d dim %d", i, d.Object, d.Index, len(d.Embedding.Float))
		}
		var n float64
		for _, x := range d.Embedding.Float {
			n += float64(x) * float64(x)
		}
		if math.Abs(n-1) > 1e-5 {
			t.Errorf("item %d: norm² %v, want 1", i, n)
		}
	}
	near := cosine(e.Data[0].Embedding.Float, e.Data[1].Embedding.Float)
	far := cosine(e.Data[0].Embedding.Float, e.Data[2].Embedding.Float)
	if near < 0.35 || far > 0.2 {
		t.Errorf("similar texts %.3f, unrelated %.3f", near, far)
	}

	_, b = post(t, s, "/v1/embeddings", `{"model":"sim-embedding","input":["the cat sat on the mat"],"encoding_format":"base64","dimensions":64}`)
	var e64 openai.EmbeddingResponse
	strict(t, b, &e64)
	if !strings.Contains(string(b), `"embedding":"`) || !e64.Data[0].Embedding.Base64 || len(e64.Data[0].Embedding.Float) != 64 {
		t.Fatalf("base64 answer %s", b)
	}
	want := Embed(make([]float32, 64), "the cat sat on the mat")
	if diff := cmp.Diff(want, e64.Data[0].Embedding.Float); diff != "" {
		t.Errorf("base64 vector (-want +got):\n%s", diff)
	}

	_, b = post(t, s, "/v1/embeddings", `{"model":"sim-embedding","input":[[1,2,3],[4]]}`)
	strict(t, b, &e)
	if len(e.Data) != 2 || e.Usage.PromptTokens != 4 {
		t.Errorf("token input: %s", b)
	}
}

func TestErrors(t *testing.T) {
	s := start(t, func(o *Options) { o.MaxModelLen = 50 })
	tests := []struct {
		name, path, body string
		status           int
		param            string
	}{
		{"unknown model", "/v1/chat/completions", `{"model":"nope","messages":[{"role":"user","content":"x"}]}`, 404, "model"},
		{"missing model", "/v1/chat/completions", `{"messages":[{"role":"user","content":"x"}]}`, 400, "model"},
		{"bad json", "/v1/chat/completions", `{"model":`, 400, ""},
		{"no messages", "/v1/chat/completions", `{"model":"sim-chat","messages":[]}`, 400, "messages"},
		{"max_tokens 0", "/v1/chat/completions", `{"model":"sim-chat","messages":[{"role":"user","content":"x"}],"max_tokens":0}`, 400, "max_tokens"},
		{"context length", "/v1/chat/completions", `{"model":"sim-chat","messages":[{"role":"user","content":"x"}],"max_tokens":45}`, 400, "max_tokens"},
		{"bad n", "/v1/chat/completions", `{"model":"sim-chat","messages":[{"role":"user","content":"x"}],"n":0}`, 400, "n"},
		{"embedding model for chat", "/v1/chat/completions", `{"model":"sim-embedding","messages":[{"role":"user","content":"x"}]}`, 400, "model"},
		{"chat model for embeddings", "/v1/embeddings", `{"model":"sim-chat","input":"x"}`, 400, "model"},
		{"empty input", "/v1/embeddings", `{"model":"sim-embedding","input":""}`, 400, "input"},
		{"bad encoding", "/v1/embeddings", `{"model":"sim-embedding","input":"x","encoding_format":"hex"}`, 400, "encoding_format"},
		{"empty prompt", "/v1/completions", `{"model":"sim-chat","prompt":[]}`, 400, "prompt"},
		{"no route", "/v1/nothing", `{}`, 404, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, b := post(t, s, tt.path, tt.body)
			if resp.StatusCode != tt.status {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tt.status, b)
			}
			var e openai.ErrorResponse
			strict(t, b, &e)
			if e.Error.Message == "" || e.Error.Type == "" {
				t.Errorf("envelope %s", b)
			}
			got := ""
			if e.Error.Param != nil {
				got = *e.Error.Param
			}
			if got != tt.param {
				t.Errorf("param %q, want %q", got, tt.param)
			}
		})
	}
}

func TestModelsAndLoRA(t *testing.T) {
	s := start(t, nil)
	get := func() openai.ModelList {
		resp, err := client.Get(s.URL() + "/v1/models")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		var l openai.ModelList
		strict(t, b, &l)
		return l
	}
	ids := func(l openai.ModelList) []string {
		var out []string
		for _, m := range l.Data {
			if m.OwnedBy != OwnedBy || m.Object != "model" || m.Created == 0 {
				t.Errorf("model %+v", m)
			}
			out = append(out, m.ID)
		}
		return out
	}
	if diff := cmp.Diff([]string{"sim-chat", "sim-embedding"}, ids(get())); diff != "" {
		t.Errorf("models (-want +got):\n%s", diff)
	}
	dir := peftDir(t)
	resp, b := post(t, s, "/v1/load_lora_adapter", `{"lora_name":"sql-lora","lora_path":`+quote(dir)+`}`)
	if resp.StatusCode != 200 || !strings.Contains(string(b), "Success") {
		t.Fatalf("load: %d %s", resp.StatusCode, b)
	}
	if resp, b := post(t, s, "/v1/load_lora_adapter", `{"lora_name":"sql-lora","lora_path":`+quote(dir)+`}`); resp.StatusCode != 400 {
		t.Errorf("second load: %d %s", resp.StatusCode, b)
	}
	l := get()
	if diff := cmp.Diff([]string{"sim-chat", "sim-embedding", "sql-lora"}, ids(l)); diff != "" {
		t.Errorf("models (-want +got):\n%s", diff)
	}
	if p := l.Data[2].Parent; p == nil || *p != "sim-chat" || l.Data[2].Root != dir {
		t.Errorf("lora entry %+v", l.Data[2])
	}
	if resp, b := post(t, s, "/v1/chat/completions", `{"model":"sql-lora","messages":[{"role":"user","content":"x"}],"max_tokens":2}`); resp.StatusCode != 200 || !strings.Contains(string(b), `"model":"sql-lora"`) {
		t.Errorf("chat with lora: %d %s", resp.StatusCode, b)
	}
	if resp, b := post(t, s, "/v1/unload_lora_adapter", `{"lora_name":"sql-lora"}`); resp.StatusCode != 200 {
		t.Errorf("unload: %d %s", resp.StatusCode, b)
	}
	if resp, _ := post(t, s, "/v1/unload_lora_adapter", `{"lora_name":"sql-lora"}`); resp.StatusCode != 404 {
		t.Errorf("second unload: %d", resp.StatusCode)
	}
	if resp, _ := post(t, s, "/v1/unload_lora_adapter", `{"lora_name":"sim-chat"}`); resp.StatusCode != 404 {
		t.Errorf("unloading a base model: %d", resp.StatusCode)
	}
	if resp, _ := post(t, s, "/v1/chat/completions", `{"model":"sql-lora","messages":[{"role":"user","content":"x"}]}`); resp.StatusCode != 404 {
		t.Errorf("chat with unloaded lora: %d", resp.StatusCode)
	}
	if diff := cmp.Diff([]string{"sim-chat", "sim-embedding"}, s.Models()); diff != "" {
		t.Errorf("Models() (-want +got):\n%s", diff)
	}
}

func TestQueueAndLoad(t *testing.T) {
	s := start(t, func(o *Options) {
		o.MaxConcurrency, o.MaxQueue = 1, 1
		o.TTFT = 50 * time.Millisecond
		o.ITL = 50 * time.Millisecond
	})
	// One stream runs (holding the only slot) while its events are read slowly.
	req, _ := http.NewRequest("POST", s.URL()+"/v1/chat/completions", strings.NewReader(`{"model":"sim-chat","messages":[{"role":"user","content":"x"}],"max_tokens":40,"stream":true}`))
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	if _, err := br.ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	if l := s.Load(); l.Running != 1 || l.Waiting != 0 || l.KVCacheUsage <= 0 {
		t.Errorf("load with one stream: %+v", l)
	}
	// A second request waits in the queue; a third finds it full.
	var wg sync.WaitGroup
	wg.Add(1)
	status2 := 0
	go func() {
		defer wg.Done()
		r, _ := post(t, s, "/v1/chat/completions", `{"model":"sim-chat","messages":[{"role":"user","content":"x"}],"max_tokens":1}`)
		status2 = r.StatusCode
	}()
	deadline := time.Now().Add(5 * time.Second)
	for s.Load().Waiting != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("second request never queued: %+v", s.Load())
		}
		time.Sleep(5 * time.Millisecond)
	}
	r3, b3 := post(t, s, "/v1/chat/completions", `{"model":"sim-chat","messages":[{"role":"user","content":"x"}]}`)
	if r3.StatusCode != 503 || r3.Header.Get("Retry-After") == "" {
		t.Errorf("third request: %d %s", r3.StatusCode, b3)
	}
	mresp, err := client.Get(s.URL() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	mb, _ := io.ReadAll(mresp.Body)
	mresp.Body.Close()
	for _, want := range []string{`vllm:num_requests_running{model_name="sim-chat"} 1`, `vllm:num_requests_waiting{model_name="sim-chat"} 1`, "vllm:gpu_cache_usage_perc", "vllm:kv_cache_usage_perc", "vllm:time_to_first_token_seconds_bucket"} {
		if !strings.Contains(string(mb), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	resp.Body.Close() // the client goes away: the stream ends and frees its slot
	wg.Wait()
	if status2 != 200 {
		t.Errorf("queued request: status %d", status2)
	}
	deadline = time.Now().Add(5 * time.Second)
	for l := s.Load(); l.Running != 0 || l.Waiting != 0 || l.KVCacheUsage != 0; l = s.Load() {
		if time.Now().After(deadline) {
			t.Fatalf("load never returned to zero: %+v", l)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestParseDist(t *testing.T) {
	tests := []struct {
		in   string
		want Dist
		err  bool
	}{
		{"16", Dist{16, 16}, false},
		{"8-64", Dist{8, 64}, false},
		{" 3 - 5 ", Dist{3, 5}, false},
		{"0", Dist{}, true},
		{"9-3", Dist{}, true},
		{"x", Dist{}, true},
	}
	for _, tt := range tests {
		got, err := ParseDist(tt.in)
		if (err != nil) != tt.err || got != tt.want {
			t.Errorf("ParseDist(%q) = %v, %v", tt.in, got, err)
		}
	}
}

func TestTokens(t *testing.T) {
	tests := []struct {
		in   string
		want int
	}{
		{"", 0},
		{"   ", 0},
		{"hello", 1},
		{"Hello, world!", 4},
		{"it's 42", 4},
		{"a\tb\nc", 3},
		{"日本語", 3},
		{"naïve", 3},
	}
	for _, tt := range tests {
		if got := Tokens(tt.in); got != tt.want {
			t.Errorf("Tokens(%q) = %d, want %d", tt.in, got, tt.want)
		}
	}
}
