package sim

import (
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/maas-platform/maas/pkg/openai"
)

// Behaviours imitated from vLLM's OpenAI server (vllm/entrypoints/openai/serving_chat.py
// and serving_completion.py, protocol.py, v1/engine/detokenizer.py).

func chatChunks(t *testing.T, s *Sim, body string) ([]openai.ChatCompletionChunk, [][]byte) {
	t.Helper()
	resp, b := post(t, s, "/v1/chat/completions", body)
	if resp.StatusCode != 200 {
		t.Fatalf("status %d: %s", resp.StatusCode, b)
	}
	raw := readStream(t, b)
	out := make([]openai.ChatCompletionChunk, len(raw))
	for i, data := range raw {
		strict(t, data, &out[i])
	}
	return out, raw
}

// With include_usage and continuous_usage_stats every chunk carries the usage so far (the
// choice's completion tokens), then the usage chunk the totals; without include_usage,
// continuous_usage_stats alone adds nothing (vLLM's should_include_usage).
func TestContinuousUsageStats(t *testing.T) {
	s := start(t, nil)
	const base = `{"model":"sim-chat","messages":[{"role":"user","content":"Hello"}],"max_tokens":3,"n":2,"stream":true`
	t.Run("with include_usage", func(t *testing.T) {
		chunks, raw := chatChunks(t, s, base+`,"stream_options":{"include_usage":true,"continuous_usage_stats":true}}`)
		sent := map[int]int{} // choice → token chunks seen
		for i, c := range chunks[:len(chunks)-1] {
			if c.Usage == nil || len(c.Choices) != 1 {
				t.Fatalf("chunk %d has no usage: %s", i, raw[i])
			}
			ch := c.Choices[0]
			if ch.Delta.Role == "" {
				sent[ch.Index]++
			}
			want := openai.Usage{PromptTokens: 7, CompletionTokens: sent[ch.Index], TotalTokens: 7 + sent[ch.Index]}
			if diff := cmp.Diff(want, *c.Usage); diff != "" {
				t.Errorf("chunk %d usage (-want +got):\n%s", i, diff)
			}
		}
		last := chunks[len(chunks)-1]
		if len(last.Choices) != 0 || last.Usage == nil || *last.Usage != (openai.Usage{PromptTokens: 7, CompletionTokens: 6, TotalTokens: 13}) {
			t.Errorf("usage chunk: %s", raw[len(raw)-1])
		}
	})
	t.Run("without include_usage", func(t *testing.T) {
		_, raw := chatChunks(t, s, base+`,"stream_options":{"continuous_usage_stats":true}}`)
		for i, data := range raw {
			if _, ok := keys(t, data)["usage"]; ok {
				t.Errorf("chunk %d has usage: %s", i, data)
			}
		}
	})
	t.Run("completions, prompt tokens per prompt", func(t *testing.T) {
		resp, b := post(t, s, "/v1/completions", `{"model":"sim-chat","prompt":["a b c","d"],"max_tokens":2,"stream":true,"stream_options":{"include_usage":true,"continuous_usage_stats":true}}`)
		if resp.StatusCode != 200 {
			t.Fatalf("status %d: %s", resp.StatusCode, b)
		}
		raw := readStream(t, b)
		sent := map[int]int{}
		for i, data := range raw[:len(raw)-1] {
			var c openai.Completion
			strict(t, data, &c)
			ch := c.Choices[0]
			sent[ch.Index]++
			prompt := map[int]int{0: 3, 1: 1}[ch.Index]
			if c.Usage == nil || *c.Usage != (openai.Usage{PromptTokens: prompt, CompletionTokens: sent[ch.Index], TotalTokens: prompt + sent[ch.Index]}) {
				t.Errorf("event %d: %s", i, data)
			}
		}
	})
}

// The chunk of a choice's last token carries its finish_reason, as vLLM sends it: no
// separate empty chunk after it.
func TestFinishReasonOnLastToken(t *testing.T) {
	s := start(t, nil)
	for _, tt := range []struct {
		body    string
		choices int
	}{
		{`{"model":"sim-chat","messages":[{"role":"user","content":"Hello"}],"max_tokens":4,"n":2,"stream":true}`, 2},
		{`{"model":"sim-chat","messages":[{"role":"user","content":"Hello"}],"stream":true}`, 1},
	} {
		chunks, raw := chatChunks(t, s, tt.body)
		finished := 0
		for i, c := range chunks {
			if c.Choices[0].FinishReason == nil {
				continue
			}
			finished++
			if d := c.Choices[0].Delta.Content; d == nil || *d == "" {
				t.Errorf("finishing chunk %d carries no token: %s", i, raw[i])
			}
		}
		if finished != tt.choices {
			t.Errorf("%d finishing chunks, want %d", finished, tt.choices)
		}
	}
}

// answer is a request's text, finish reason and completion tokens, streamed or not.
type answer struct {
	Text, Finish string
	Tokens       int
}

func chatAnswer(t *testing.T, s *Sim, body string, stream bool) answer {
	t.Helper()
	if !stream {
		resp, b := post(t, s, "/v1/chat/completions", body+"}")
		if resp.StatusCode != 200 {
			t.Fatalf("status %d: %s", resp.StatusCode, b)
		}
		var c openai.ChatCompletion
		strict(t, b, &c)
		return answer{c.Choices[0].Message.Content.String(), c.Choices[0].FinishReason, c.Usage.CompletionTokens}
	}
	chunks, _ := chatChunks(t, s, body+`,"stream":true,"stream_options":{"include_usage":true}}`)
	var a answer
	for _, c := range chunks {
		if c.Usage != nil {
			a.Tokens = c.Usage.CompletionTokens
			continue
		}
		if d := c.Choices[0].Delta.Content; d != nil {
			a.Text += *d
		}
		if f := c.Choices[0].FinishReason; f != nil {
			a.Finish = *f
		}
	}
	return a
}

// Stop sequences end generation at the token that completes one; the text stops where the
// sequence begins, the tokens up to it are counted, finish_reason is "stop".
func TestStopSequences(t *testing.T) {
	s := start(t, nil)
	const base = `{"model":"sim-chat","messages":[{"role":"user","content":"Tell me"}],"max_tokens":12`
	full := chatAnswer(t, s, base, false)
	words := strings.Fields(full.Text)
	if full.Tokens != 12 || len(words) != 12 || full.Finish != "length" {
		t.Fatalf("unrestricted answer: %+v", full)
	}
	// A stop spanning words 3 and 4 (completed by token 5), a stop that is a space and a
	// word, a stop that never comes.
	span := words[3] + " " + words[4][:2]
	tests := []struct {
		name, stop string
		want       answer
	}{
		{"spanning words", strconv.Quote(span), answer{full.Text[:strings.Index(full.Text, span)], "stop", 5}},
		{"list, leading space", `["zzz"," ` + words[2] + `"]`, answer{full.Text[:strings.Index(full.Text, " "+words[2])], "stop", strings.Count(full.Text[:strings.Index(full.Text, " "+words[2])], " ") + 2}},
		{"never", `["zzz"]`, full},
		{"first word", strconv.Quote(words[0]), answer{"", "stop", 1}},
	}
	for _, tt := range tests {
		for _, stream := range []bool{false, true} {
			t.Run(tt.name+map[bool]string{false: "", true: " streamed"}[stream], func(t *testing.T) {
				got := chatAnswer(t, s, base+`,"stop":`+tt.stop, stream)
				if diff := cmp.Diff(tt.want, got); diff != "" {
					t.Errorf("stop %s (-want +got):\n%s", tt.stop, diff)
				}
			})
		}
	}
	t.Run("empty stop refused", func(t *testing.T) {
		resp, b := post(t, s, "/v1/chat/completions", base+`,"stop":["x",""]}`)
		if resp.StatusCode != 400 || !strings.Contains(string(b), `"param":"stop"`) {
			t.Errorf("status %d: %s", resp.StatusCode, b)
		}
	})
	t.Run("completions", func(t *testing.T) {
		resp, b := post(t, s, "/v1/completions", `{"model":"sim-chat","prompt":"Tell me","max_tokens":12}`)
		var c openai.Completion
		strict(t, b, &c)
		text := c.Choices[0].Text
		stop := strings.Fields(text)[1]
		resp, b = post(t, s, "/v1/completions", `{"model":"sim-chat","prompt":"Tell me","max_tokens":12,"stop":`+strconv.Quote(stop)+`}`)
		strict(t, b, &c)
		if resp.StatusCode != 200 || c.Choices[0].Text != text[:strings.Index(text, stop)] || *c.Choices[0].FinishReason != "stop" || c.Usage.CompletionTokens != 2 {
			t.Errorf("status %d: %s", resp.StatusCode, b)
		}
	})
}

// system_fingerprint as vLLM sends it: by default null in non-streamed answers and absent
// from chunks; with a fingerprint configured, in answers, and in a stream on the usage
// chunk, or on the finishing chunks when there is no usage chunk.
func TestSystemFingerprint(t *testing.T) {
	const chat = `{"model":"sim-chat","messages":[{"role":"user","content":"Hello"}],"max_tokens":3,"n":2`
	for _, fp := range []string{"", "vllm-sim-0123abcd"} {
		s := start(t, func(o *Options) { o.SystemFingerprint = fp })
		want := "null"
		if fp != "" {
			want = strconv.Quote(fp)
		}
		for _, path := range []string{"/v1/chat/completions", "/v1/completions"} {
			body := chat + "}"
			if path == "/v1/completions" {
				body = `{"model":"sim-chat","prompt":"Hello","max_tokens":3}`
			}
			_, b := post(t, s, path, body)
			if got := string(keys(t, b)["system_fingerprint"]); got != want {
				t.Errorf("%s fingerprint %q: body has %q: %s", path, fp, got, b)
			}
		}
		for _, usage := range []bool{false, true} {
			body := chat + `,"stream":true`
			if usage {
				body += `,"stream_options":{"include_usage":true}`
			}
			chunks, raw := chatChunks(t, s, body+"}")
			for i, c := range chunks {
				stamped := fp != "" && (usage && c.Usage != nil && len(c.Choices) == 0 ||
					!usage && len(c.Choices) == 1 && c.Choices[0].FinishReason != nil)
				_, has := keys(t, raw[i])["system_fingerprint"]
				if has != stamped || has && c.SystemFingerprint != fp {
					t.Errorf("fingerprint %q, usage %v: chunk %d: %s", fp, usage, i, raw[i])
				}
			}
		}
	}
}
