package openai

import (
	"encoding/json"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestContent(t *testing.T) {
	tests := []struct {
		name     string
		in       string
		wantText string
		back     string
	}{
		{"string", `"hello"`, "hello", `"hello"`},
		{"null", `null`, "", `null`},
		{"parts", `[{"type":"text","text":"a"},{"type":"image_url","image_url":{"url":"u"}},{"type":"text","text":"b"}]`, "a\nb",
			`[{"type":"text","text":"a"},{"type":"image_url","image_url":{"url":"u"}},{"type":"text","text":"b"}]`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var c Content
			if err := json.Unmarshal([]byte(tt.in), &c); err != nil {
				t.Fatal(err)
			}
			if c.String() != tt.wantText {
				t.Errorf("text %q, want %q", c.String(), tt.wantText)
			}
			b, err := json.Marshal(c)
			if err != nil {
				t.Fatal(err)
			}
			if string(b) != tt.back {
				t.Errorf("marshal %s, want %s", b, tt.back)
			}
		})
	}
	var c Content
	if err := json.Unmarshal([]byte(`12`), &c); err == nil {
		t.Error("a number must be refused")
	}
}

func TestInput(t *testing.T) {
	tests := []struct {
		in      string
		want    Input
		wantErr bool
	}{
		{`"a b"`, Input{Strings: []string{"a b"}, Single: true}, false},
		{`["a","b"]`, Input{Strings: []string{"a", "b"}}, false},
		{`[1,2,3]`, Input{Tokens: [][]int{{1, 2, 3}}, Single: true}, false},
		{`[[1],[2,3]]`, Input{Tokens: [][]int{{1}, {2, 3}}}, false},
		{`[]`, Input{Strings: []string{}}, false},
		{`{}`, Input{}, true},
		{`[[1],["x"]]`, Input{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			var got Input
			err := json.Unmarshal([]byte(tt.in), &got)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v", err)
			}
			if tt.wantErr {
				return
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
			b, _ := json.Marshal(got)
			if string(b) != tt.in {
				t.Errorf("round trip %s, want %s", b, tt.in)
			}
		})
	}
}

func TestStringList(t *testing.T) {
	var r ChatCompletionRequest
	if err := json.Unmarshal([]byte(`{"model":"m","messages":[],"stop":"x"}`), &r); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(StringList{"x"}, *r.Stop); diff != "" {
		t.Error(diff)
	}
	if err := json.Unmarshal([]byte(`{"stop":["x","y"]}`), &r); err != nil || len(*r.Stop) != 2 {
		t.Errorf("list: %v %v", err, r.Stop)
	}
}

func TestVectorBase64(t *testing.T) {
	f := []float32{1, -0.5, 0.25, 3.1415927}
	// 1.0 little-endian float32 is 00 00 80 3f.
	if got := EncodeBase64([]float32{1}); got != "AACAPw==" {
		t.Errorf("base64 of 1.0 = %q", got)
	}
	b, err := json.Marshal(Embedding{Object: ObjectEmbedding, Embedding: Vector{Float: f, Base64: true}})
	if err != nil {
		t.Fatal(err)
	}
	var e Embedding
	if err := json.Unmarshal(b, &e); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(f, e.Embedding.Float); diff != "" || !e.Embedding.Base64 {
		t.Errorf("round trip (-want +got):\n%s", diff)
	}
	b, _ = json.Marshal(Vector{Float: f})
	if string(b) != `[1,-0.5,0.25,3.1415927]` {
		t.Errorf("float form %s", b)
	}
	if _, err := DecodeBase64("AAA="); err == nil {
		t.Error("3 bytes must be refused")
	}
}

func TestChatLimit(t *testing.T) {
	a, b := 5, 9
	tests := []struct {
		r    ChatCompletionRequest
		want int
		ok   bool
	}{
		{ChatCompletionRequest{}, 0, false},
		{ChatCompletionRequest{MaxTokens: &a}, 5, true},
		{ChatCompletionRequest{MaxTokens: &a, MaxCompletionTokens: &b}, 9, true},
	}
	for _, tt := range tests {
		if got, ok := tt.r.Limit(); got != tt.want || ok != tt.ok {
			t.Errorf("Limit() = %d %v, want %d %v", got, ok, tt.want, tt.ok)
		}
	}
}
