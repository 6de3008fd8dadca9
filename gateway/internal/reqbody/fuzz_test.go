package reqbody

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/maas-platform/maas/pkg/apierr"
)

// agree fails t unless Parse does what the oracle says; for a streamed body it also checks
// the include_usage rewrite.
func agree(t *testing.T, body []byte, ep Endpoint, lim Limits) {
	t.Helper()
	want := oracle(body, ep, lim)
	f, err := Parse(body, ep, lim)
	if want.kind != "" {
		var e *apierr.Error
		if !errors.As(err, &e) || e.Kind != apierr.InvalidRequest {
			t.Fatalf("Parse(%q, %d) = %v, want a 400 (%s %v)", body, ep, err, want.kind, want.params)
		}
		var ok bool
		switch want.kind {
		case "empty":
			ok = strings.HasPrefix(e.Message, "request body is empty")
		case "syntax":
			ok = strings.HasPrefix(e.Message, "request body is not valid JSON")
		case "object":
			ok = e.Message == "request body must be a JSON object"
		case "encoding":
			ok = strings.Contains(e.Message, "UTF-8") || strings.Contains(e.Message, "surrogate")
		case "field":
			ok = want.params[e.Param]
		}
		if !ok {
			t.Fatalf("Parse(%q, %d) = %q (param %q), want %s %v", body, ep, e.Message, e.Param, want.kind, want.params)
		}
		return
	}
	if err != nil {
		t.Fatalf("Parse(%q, %d) = %v, want accepted", body, ep, err)
	}
	got := read{model: string(f.Model), stream: f.Stream, usage: f.IncludeUsage, maxTok: f.MaxTokens,
		maxComp: f.MaxCompletionTokens, n: f.N, msgs: f.Messages, inputs: f.Inputs, prompts: f.Prompts}
	wantLen, wantPrefix := len(want.prompt), want.prompt[:min(len(want.prompt), PrefixBytes)]
	if got != want.read {
		t.Fatalf("Parse(%q, %d)\n got %+v\nwant %+v", body, ep, got, want.read)
	}
	if f.PromptBytes != wantLen || !bytes.Equal(f.Prefix, wantPrefix) {
		t.Fatalf("Parse(%q, %d): prompt %d bytes, prefix %q; want prefix %q", body, ep, f.PromptBytes, f.Prefix, wantPrefix)
	}
	if r := f.Rewrites(77); r != (Rewrite{}) {
		rewritten(t, body, ep, lim, &f, r)
	}
}

// rewritten checks AppendRewrite: the result is read as the same request with
// include_usage true and max_tokens set as r asks, every other member unchanged.
func rewritten(t *testing.T, body []byte, ep Endpoint, lim Limits, f *Fields, r Rewrite) {
	t.Helper()
	out := f.AppendRewrite([]byte("prefix"), body, r)
	if !bytes.HasPrefix(out, []byte("prefix")) {
		t.Fatalf("AppendRewrite lost dst")
	}
	out = out[len("prefix"):]
	g, err := Parse(out, ep, lim)
	if err != nil || r.IncludeUsage && !g.IncludeUsage || r.MaxTokens > 0 && g.MaxTokens != r.MaxTokens {
		t.Fatalf("AppendRewrite(%q, %+v) = %q: %v, include_usage %v, max_tokens %d", body, r, out, err, g.IncludeUsage, g.MaxTokens)
	}
	if string(g.Model) != string(f.Model) || g.Stream != f.Stream || g.N != f.N || g.MaxCompletionTokens != f.MaxCompletionTokens ||
		g.Messages != f.Messages || g.Inputs != f.Inputs || g.Prompts != f.Prompts || g.PromptBytes != f.PromptBytes || !bytes.Equal(g.Prefix, f.Prefix) {
		t.Fatalf("AppendRewrite(%q, %+v) = %q: read as %+v, was %+v", body, r, out, g, *f)
	}
	before, after := map[string]json.RawMessage{}, map[string]json.RawMessage{}
	if json.Unmarshal(body, &before) != nil || json.Unmarshal(out, &after) != nil {
		t.Fatalf("AppendRewrite(%q) = %q: not an object", body, out)
	}
	same := func(a, b map[string]json.RawMessage) bool {
		if len(a) != len(b) {
			return false
		}
		for k, v := range a {
			if !bytes.Equal(v, b[k]) {
				return false
			}
		}
		return true
	}
	if r.IncludeUsage {
		soBefore, soAfter := map[string]json.RawMessage{}, map[string]json.RawMessage{}
		_ = json.Unmarshal(before["stream_options"], &soBefore)
		_ = json.Unmarshal(after["stream_options"], &soAfter)
		delete(before, "stream_options")
		delete(after, "stream_options")
		if string(soAfter[includeUsage]) != "true" {
			t.Fatalf("AppendRewrite(%q) = %q: include_usage %s", body, out, soAfter[includeUsage])
		}
		delete(soBefore, includeUsage)
		delete(soAfter, includeUsage)
		if !same(soBefore, soAfter) {
			t.Fatalf("AppendRewrite(%q) = %q: stream_options changed", body, out)
		}
	}
	if r.MaxTokens > 0 {
		delete(before, "max_tokens")
		delete(after, "max_tokens")
	}
	if !same(before, after) {
		t.Fatalf("AppendRewrite(%q) = %q: other members changed", body, out)
	}
}

// seeds covers escapes, duplicates, case variants, invalid UTF-8 and surrogates, types,
// nulls and bounds; the fuzzer starts from them on every endpoint.
var seeds = []string{
	`{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true}`,
	`{"model":"sim-chat","str\u0065am":true,"messages":[]}`,
	`{"model":"a","m\u006fdel":"b","messages":[]}`,
	`{"m\u006fdel":"a","model":"b"}`,
	`{"model":"m","max_tokens":9,"max_completion_tokens":30000,"n":4,"messages":[]}`,
	`{"model":"m","max_tok\u0065ns":1000000,"max_tokens":1}`,
	`{"MODEL":"x","model":"m"}`, `{"Model":"x"}`, `{"model":"m","Stream":true}`,
	`{"model":"m","ſtream":true}`, "{\"model\":\"m\",\"max_to\u212aens\":5}",
	"{\"model\":\"m\xff\"}", "{\"model\":\"m\",\"x\":\"\xc3\x28\"}", "{\"\xff\":1,\"model\":\"m\"}",
	`{"model":"m\u0000"}`, `{"model":"\ud800"}`, `{"model":"m","x":"\udc00"}`, `{"model":"\ud83d\ude00"}`,
	`{"model":"m","x":"\ud83d\u0041"}`, `{"model":"\u00e9\"\\\/\b\f\n\r\t"}`,
	`{"model":""}`, `{"model":null}`, `{"model":1}`, `{"model":["m"]}`, `{}`, `{"messages":[]}`,
	`{"model":"m","stream":"true"}`, `{"model":"m","stream":null}`, `{"model":"m","stream":false}`,
	`{"model":"m","stream":1}`,
	`{"model":"m","stream":true,"stream_options":null}`,
	`{"model":"m","stream":true,"stream_options":{}}`,
	`{"model":"m","stream":true,"stream_options":{ }}`,
	`{"model":"m","stream":true,"stream_options":{"include_usage":false}}`,
	`{"model":"m","stream":true,"stream_options":{"include_usage":true}}`,
	`{"model":"m","stream":true,"stream_options":{"x":1}}`,
	`{"model":"m","stream":true,"stream_options":{"x":[1,{"y":"}"}],"include_usage":null,"z":2}`,
	`{"model":"m","stream":true,"stream_\u006fptions":{"include_\u0075sage":false}}`,
	`{"model":"m","stream":true,"stream_options":{"include_usage":true,"include_usage":false}}`,
	`{"model":"m","stream":true,"stream_options":{"Include_Usage":false}}`,
	`{"model":"m","stream":true,"stream_options":{"include_usage":1}}`,
	`{"model":"m","stream":true,"stream_options":5}`,
	`{"model":"m","stream":true,"stream_options":{},"stream_options":null}`,
	` { "model" : "m" , "stream" : true , "stream_options" : { "include_usage" : false } } `,
	`{"model":"m","max_tokens":null,"max_completion_tokens":null,"n":null}`,
	`{"model":"m","max_tokens":-1}`, `{"model":"m","max_tokens":1.5}`, `{"model":"m","max_tokens":1e3}`,
	`{"model":"m","max_tokens":10.0}`, `{"model":"m","max_tokens":-0}`, `{"model":"m","max_tokens":"10"}`,
	`{"model":"m","max_tokens":9223372036854775807}`, `{"model":"m","max_tokens":9223372036854775808}`,
	`{"model":"m","max_tokens":123456789012345678901234567890}`, `{"model":"m","max_tokens":1e400}`,
	`{"model":"m","n":0}`, `{"model":"m","n":17}`, `{"model":"m","n":16}`, `{"model":"m","n":-2}`,
	`{"model":"m","messages":[1,2,3]}`, `{"model":"m","messages":"hi"}`, `{"model":"m","messages":null}`,
	`{"model":"m","prompt":"hello"}`, `{"model":"m","prompt":["a","b"]}`, `{"model":"m","prompt":[1,2,3,4]}`,
	`{"model":"m","prompt":[[1,2],[3],[4],[5]]}`, `{"model":"m","prompt":[]}`, `{"model":"m","prompt":[ "a" ,"b","c","d"]}`,
	`{"model":"m","input":"hello"}`, `{"model":"m","input":["a","b",[1,2]]}`, `{"model":"m","input":null}`,
	`{"model":"m","messages":[],"messages":[]}`, `{"model":"m","prompt":"a","prompt":"b"}`,
	`{"model":"m","n":1,"n":2}`, `{"model":"m","stream":false,"stream":true}`,
	`{"model":"m","x":1,"x":2}`,
	`{"model":"m",`, `{"model":"m"}}`, `[1,2]`, `"x"`, ``, ` `, `{"model":"m","messages":[1,]}`,
	`{"model":"m","a":{"b":[[[{"c":"\u00e9"}]]]}}`,
}

func TestParseAgreesWithEncodingJSON(t *testing.T) {
	for _, ep := range []Endpoint{Chat, Completions, Embeddings} {
		for _, lim := range []Limits{DefaultLimits(), {MaxN: 2, MaxMessages: 2, MaxInputs: 2}, {}} {
			for _, s := range seeds {
				agree(t, []byte(s), ep, lim)
			}
		}
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range seeds {
		for ep := range 3 {
			f.Add([]byte(s), uint8(ep))
		}
	}
	f.Fuzz(func(t *testing.T, body []byte, ep uint8) {
		agree(t, body, Endpoint(ep%3), Limits{MaxN: 4, MaxMessages: 3, MaxInputs: 3})
	})
}
