package reqbody

import (
	"encoding/json"
	"errors"
	"math"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/maas-platform/maas/pkg/apierr"
)

func TestParseReads(t *testing.T) {
	type got struct {
		Model                          string
		Stream, IncludeUsage           bool
		MaxTokens, MaxCompletionTokens int64
		N                              int64
		Messages, Inputs, PromptBytes  int
		Prefix                         string
	}
	tests := []struct {
		name string
		ep   Endpoint
		body string
		want got
	}{
		{"chat", Chat, `{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":16}`,
			got{Model: "m", MaxTokens: 16, MaxCompletionTokens: -1, N: 1, Messages: 1, PromptBytes: 32,
				Prefix: `[{"role":"user","content":"hi"}]`}},
		{"escaped stream key", Chat, `{"model":"sim-chat","str\u0065am":true,"messages":[]}`,
			got{Model: "sim-chat", Stream: true, MaxTokens: -1, MaxCompletionTokens: -1, N: 1, PromptBytes: 2, Prefix: "[]"}},
		{"escaped model value", Chat, `{"model":"sim-\u0063hat\ud83d\ude00"}`,
			got{Model: "sim-chat😀", MaxTokens: -1, MaxCompletionTokens: -1, N: 1}},
		{"escaped max_tokens key", Chat, `{"model":"m","max_tok\u0065ns":1000000}`,
			got{Model: "m", MaxTokens: 1000000, MaxCompletionTokens: -1, N: 1}},
		{"MODEL is not model", Chat, `{"model":"m","x-MODEL":"y"}`,
			got{Model: "m", MaxTokens: -1, MaxCompletionTokens: -1, N: 1}},
		{"nulls", Chat, `{"model":"m","stream":null,"stream_options":null,"max_tokens":null,"max_completion_tokens":null,"n":null,"messages":null}`,
			got{Model: "m", MaxTokens: -1, MaxCompletionTokens: -1, N: 1, PromptBytes: 4, Prefix: "null"}},
		{"both limits and n", Chat, `{"model":"m","n":4,"max_completion_tokens":30000,"max_tokens":9}`,
			got{Model: "m", MaxTokens: 9, MaxCompletionTokens: 30000, N: 4}},
		{"integral numbers", Completions, `{"model":"m","n":2.0,"max_tokens":1e3,"max_completion_tokens":-0,"prompt":"hey"}`,
			got{Model: "m", MaxTokens: 1000, MaxCompletionTokens: 0, N: 2, PromptBytes: 5, Prefix: `"hey"`}},
		{"stream with usage", Completions, `{"model":"m","stream":true,"stream_options":{"include_usage":true},"prompt":["a","b"]}`,
			got{Model: "m", Stream: true, IncludeUsage: true, MaxTokens: -1, MaxCompletionTokens: -1, N: 1, PromptBytes: 9, Prefix: `["a","b"]`}},
		{"escaped include_usage", Chat, `{"model":"m","stream":true,"stream_options":{"include_\u0075sage":true}}`,
			got{Model: "m", Stream: true, IncludeUsage: true, MaxTokens: -1, MaxCompletionTokens: -1, N: 1}},
		{"embeddings never stream, n not read", Embeddings, `{"model":"e","stream":true,"n":0,"input":["a","b","c"]}`,
			got{Model: "e", MaxTokens: -1, MaxCompletionTokens: -1, N: 1, Inputs: 3, PromptBytes: 13, Prefix: `["a","b","c"]`}},
		{"embeddings string input", Embeddings, `{"model":"e","input":"abc"}`,
			got{Model: "e", MaxTokens: -1, MaxCompletionTokens: -1, N: 1, Inputs: 1, PromptBytes: 5, Prefix: `"abc"`}},
		{"prompt field of another endpoint is not read", Chat, `{"model":"m","prompt":"x","prompt":"y","input":[1]}`,
			got{Model: "m", MaxTokens: -1, MaxCompletionTokens: -1, N: 1}},
		{"long prompt: prefix capped", Completions, `{"model":"m","prompt":"` + strings.Repeat("a", 600) + `"}`,
			got{Model: "m", MaxTokens: -1, MaxCompletionTokens: -1, N: 1, PromptBytes: 602, Prefix: `"` + strings.Repeat("a", 511)}},
		{"spaces", Chat, " \n{ \"model\" : \"m\" , \"stream\" : true , \"messages\" : [ 1 , 2 ] }\t",
			got{Model: "m", Stream: true, MaxTokens: -1, MaxCompletionTokens: -1, N: 1, Messages: 2, PromptBytes: 9, Prefix: "[ 1 , 2 ]"}},
		{"duplicate uninterpreted keys pass", Chat, `{"model":"m","temperature":1,"temperature":2}`,
			got{Model: "m", MaxTokens: -1, MaxCompletionTokens: -1, N: 1}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f, err := Parse([]byte(tc.body), tc.ep, DefaultLimits())
			if err != nil {
				t.Fatal(err)
			}
			g := got{string(f.Model), f.Stream, f.IncludeUsage, f.MaxTokens, f.MaxCompletionTokens, f.N,
				f.Messages, f.Inputs, f.PromptBytes, string(f.Prefix)}
			if diff := cmp.Diff(tc.want, g); diff != "" {
				t.Errorf("fields (-want +got):\n%s", diff)
			}
			agree(t, []byte(tc.body), tc.ep, DefaultLimits())
		})
	}
}

func TestParseRefuses(t *testing.T) {
	lim := Limits{MaxN: 4, MaxMessages: 3, MaxInputs: 2}
	tests := []struct {
		name  string
		ep    Endpoint
		body  string
		param string
		msg   string
	}{
		{"empty", Chat, " \n", "", "request body is empty; send a JSON object"},
		{"not JSON", Chat, `{"model":"m",`, "", "request body is not valid JSON: unexpected end of JSON input"},
		{"trailing comma", Chat, `{"model":"m","messages":[1,]}`, "", "request body is not valid JSON: invalid character ']' looking for beginning of value"},
		{"syntax before field errors", Chat, `{"max_tokens":"x","model":"m",}`, "", "request body is not valid JSON: invalid character '}' looking for beginning of object key string"},
		{"not an object", Chat, `[1,2]`, "", "request body must be a JSON object"},
		{"no model", Chat, `{"messages":[]}`, "model", "you must provide a model parameter"},
		{"null model", Chat, `{"model":null}`, "model", "you must provide a model parameter"},
		{"empty model", Chat, `{"model":""}`, "model", "you must provide a model parameter"},
		{"model not a string", Chat, `{"model":7}`, "model", "model must be a string"},
		{"NUL in model", Chat, `{"model":"a\u0000b"}`, "model", "model must not contain a NUL character"},
		{"invalid UTF-8 in model", Chat, "{\"model\":\"sim\xff\"}", "model", "the `model` holds text that is not valid UTF-8"},
		{"invalid UTF-8 elsewhere", Chat, "{\"model\":\"m\",\"messages\":[{\"content\":\"\xc3\x28\"}]}", "messages", "the `messages` holds text that is not valid UTF-8"},
		{"invalid UTF-8 in a key", Chat, "{\"model\":\"m\",\"\xed\xa0\x80\":1}", "", "the request body holds text that is not valid UTF-8"},
		{"lone high surrogate in model", Chat, `{"model":"\ud800x"}`, "model", "the `model` holds the escape \\ud800, half of a UTF-16 surrogate pair without its other half"},
		{"lone low surrogate elsewhere", Chat, `{"model":"m","user":"\uDC00"}`, "user", "the `user` holds the escape \\udc00, half of a UTF-16 surrogate pair without its other half"},
		{"high surrogate then letter", Chat, `{"model":"m","user":"\ud83d\u0041"}`, "user", "the `user` holds the escape \\ud83d, half of a UTF-16 surrogate pair without its other half"},
		{"encoding before field errors", Chat, "{\"stream\":1,\"model\":\"\xff\"}", "model", "the `model` holds text that is not valid UTF-8"},
		{"duplicate escaped model", Chat, `{"model":"sim-chat","m\u006fdel":"secret-lora"}`, "model", "duplicate parameter `model`: send each parameter once"},
		{"duplicate model", Chat, `{"model":"a","model":"b"}`, "model", "duplicate parameter `model`: send each parameter once"},
		{"duplicate stream", Chat, `{"model":"m","stream":false,"str\u0065am":true}`, "stream", "duplicate parameter `stream`: send each parameter once"},
		{"duplicate max_tokens", Chat, `{"model":"m","max_tokens":1,"max_tokens":1}`, "max_tokens", "duplicate parameter `max_tokens`: send each parameter once"},
		{"duplicate messages", Chat, `{"model":"m","messages":[],"messages":[]}`, "messages", "duplicate parameter `messages`: send each parameter once"},
		{"duplicate input", Embeddings, `{"model":"m","input":"a","input":"b"}`, "input", "duplicate parameter `input`: send each parameter once"},
		{"duplicate include_usage", Chat, `{"model":"m","stream_options":{"include_usage":true,"include_\u0075sage":false}}`, "stream_options.include_usage", "duplicate parameter `stream_options.include_usage`: send each parameter once"},
		{"MODEL", Chat, `{"MODEL":"m"}`, "MODEL", "unrecognized parameter `MODEL`: parameter names are case-sensitive (did you mean `model`?)"},
		{"Stream", Chat, `{"model":"m","Stream":true}`, "Stream", "unrecognized parameter `Stream`: parameter names are case-sensitive (did you mean `stream`?)"},
		{"long s", Chat, `{"model":"m","ſtream":true}`, "ſtream", "unrecognized parameter `ſtream`: parameter names are case-sensitive (did you mean `stream`?)"},
		{"Kelvin sign, escaped", Chat, `{"model":"m","max_to\u212aens":1}`, "max_to\u212aens", "unrecognized parameter `max_to\u212aens`: parameter names are case-sensitive (did you mean `max_tokens`?)"},
		{"Include_Usage", Chat, `{"model":"m","stream_options":{"Include_Usage":false}}`, "stream_options.Include_Usage", "unrecognized parameter `Include_Usage`: parameter names are case-sensitive (did you mean `include_usage`?)"},
		{"stream string", Chat, `{"model":"m","stream":"true"}`, "stream", "stream must be a boolean"},
		{"stream number", Embeddings, `{"model":"m","stream":1}`, "stream", "stream must be a boolean"},
		{"stream_options not an object", Chat, `{"model":"m","stream_options":true}`, "stream_options", "stream_options must be an object"},
		{"include_usage not a boolean", Chat, `{"model":"m","stream_options":{"include_usage":"yes"}}`, "stream_options.include_usage", "stream_options.include_usage must be a boolean"},
		{"max_tokens negative", Chat, `{"model":"m","max_tokens":-1}`, "max_tokens", "max_tokens must be a non-negative integer"},
		{"max_tokens fraction", Chat, `{"model":"m","max_tokens":1.5}`, "max_tokens", "max_tokens must be a non-negative integer"},
		{"max_tokens string", Chat, `{"model":"m","max_tokens":"10"}`, "max_tokens", "max_tokens must be a non-negative integer"},
		{"max_tokens too large", Chat, `{"model":"m","max_tokens":9223372036854775808}`, "max_tokens", "max_tokens must be a non-negative integer"},
		{"max_completion_tokens bool", Completions, `{"model":"m","max_completion_tokens":true}`, "max_completion_tokens", "max_completion_tokens must be a non-negative integer"},
		{"n zero", Chat, `{"model":"m","n":0}`, "n", "n must be a positive integer"},
		{"n string", Completions, `{"model":"m","n":"2"}`, "n", "n must be a positive integer"},
		{"n over the limit", Chat, `{"model":"m","n":5}`, "n", "n must be at most 4, got 5"},
		{"messages over the limit", Chat, `{"model":"m","messages":[{},{},{},{}]}`, "messages", "messages may hold at most 3 messages, got 4"},
		{"inputs over the limit", Embeddings, `{"model":"m","input":["a","b","c"]}`, "input", "input may hold at most 2 items, got 3"},
		{"prompt batch over the limit", Completions, `{"model":"m","prompt":[[1],[2],[3]]}`, "prompt", "prompt may hold at most 2 prompts, got 3"},
		{"first field error wins", Chat, `{"model":"m","n":0,"stream":2}`, "n", "n must be a positive integer"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.body), tc.ep, lim)
			var e *apierr.Error
			if !errors.As(err, &e) {
				t.Fatalf("err %v, want an *apierr.Error", err)
			}
			if e.Kind != apierr.InvalidRequest || e.Param != tc.param || e.Message != tc.msg {
				t.Errorf("got %v %q %q\nwant 400 %q %q", e.Kind.Status(), e.Param, e.Message, tc.param, tc.msg)
			}
			agree(t, []byte(tc.body), tc.ep, lim)
		})
	}
}

func TestParseBoundsAtTheLimit(t *testing.T) {
	lim := Limits{MaxN: 4, MaxMessages: 3, MaxInputs: 2}
	for _, tc := range []struct {
		ep   Endpoint
		body string
	}{
		{Chat, `{"model":"m","n":4,"messages":[{},{},{}]}`},
		{Completions, `{"model":"m","n":4,"prompt":["a","b"]}`},
		{Completions, `{"model":"m","n":4,"prompt":[1,2,3,4,5,6]}`},
		{Embeddings, `{"model":"m","input":["a","b"],"n":100}`},
	} {
		if _, err := Parse([]byte(tc.body), tc.ep, lim); err != nil {
			t.Errorf("%s: %v", tc.body, err)
		}
		if _, err := Parse([]byte(tc.body), tc.ep, Limits{}); err != nil {
			t.Errorf("%s without limits: %v", tc.body, err)
		}
	}
	if _, err := Parse([]byte(`{"model":"m","n":1000000}`), Chat, Limits{}); err != nil {
		t.Errorf("no limit on n: %v", err)
	}
}

func TestParseNestingLimit(t *testing.T) {
	for _, depth := range []int{maxNesting - 2, maxNesting - 1, maxNesting, maxNesting + 1} {
		for _, member := range []string{"x", "messages", "stream_options"} {
			body := `{"model":"m","` + member + `":` + strings.Repeat("[", depth-1) + strings.Repeat("]", depth-1) + `}`
			_, err := Parse([]byte(body), Chat, Limits{})
			valid := json.Valid([]byte(body))
			if refused := err != nil && strings.Contains(err.Error(), "not valid JSON"); refused == valid {
				t.Errorf("%s at depth %d: err %v, json.Valid %v", member, depth, err, valid)
			}
		}
	}
}

func TestReservation(t *testing.T) {
	tests := []struct {
		name string
		ep   Endpoint
		body string
		cap  int64
		want int64
	}{
		{"n × larger limit + prompt", Chat, `{"model":"m","n":4,"max_completion_tokens":30000,"max_tokens":9,"messages":["12345678"]}`, 1024, 4*30000 + 3},
		{"max_tokens larger", Chat, `{"model":"m","max_completion_tokens":10,"max_tokens":90}`, 1024, 90},
		{"no limit: model cap", Chat, `{"model":"m","n":2,"messages":[]}`, 1024, 2*1024 + 1},
		{"zero limits: model cap", Completions, `{"model":"m","max_tokens":0,"max_completion_tokens":0,"prompt":"abcdef"}`, 100, 100 + 2},
		{"escaped max_tokens counted", Chat, `{"model":"m","max_tok\u0065ns":100000}`, 1024, 100000},
		{"completions batch: output per prompt", Completions, `{"model":"m","n":2,"max_tokens":100,"prompt":["abc","def","ghi"]}`, 1024, 3*2*100 + 5},
		{"completions token list: one prompt", Completions, `{"model":"m","max_tokens":100,"prompt":[1,2,3]}`, 1024, 100 + 2},
		{"embeddings: prompt only", Embeddings, `{"model":"e","input":"` + strings.Repeat("x", 98) + `","max_tokens":500}`, 1024, 25},
		{"saturates", Chat, `{"model":"m","n":16,"max_tokens":9223372036854775807}`, 0, math.MaxInt64},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f, err := Parse([]byte(tc.body), tc.ep, DefaultLimits())
			if err != nil {
				t.Fatal(err)
			}
			if got := f.Reservation(tc.cap); got != tc.want {
				t.Errorf("Reservation(%d) = %d, want %d", tc.cap, got, tc.want)
			}
		})
	}
}

func TestAppendIncludeUsage(t *testing.T) {
	tests := []struct{ in, want string }{
		{`{"model":"m","stream":true}`, `{"stream_options":{"include_usage":true},"model":"m","stream":true}`},
		{` { "model" : "m" , "stream":true, "stream_options" : {"include_usage":false} }`, ` { "model" : "m" , "stream":true, "stream_options" : {"include_usage":true} }`},
		{`{"stream_options":{"x":1,"include_usage":false,"y":[1,{"z":"}"}]},"model":"m","stream":true}`, `{"stream_options":{"x":1,"include_usage":true,"y":[1,{"z":"}"}]},"model":"m","stream":true}`},
		{`{"stream_options":null,"model":"m","stream":true}`, `{"stream_options":{"include_usage":true},"model":"m","stream":true}`},
		{`{"stream_options":{ },"model":"m","stream":true}`, `{"stream_options":{"include_usage":true},"model":"m","stream":true}`},
		{`{"stream_options":{"x":1},"model":"m","stream":true}`, `{"stream_options":{"include_usage":true,"x":1},"model":"m","stream":true}`},
		{`{"model":"m","stream":true,"stream_\u006fptions":{"include_\u0075sage":null}}`, `{"model":"m","stream":true,"stream_\u006fptions":{"include_\u0075sage":true}}`},
		{`{"model":"m","str\u0065am":true}`, `{"stream_options":{"include_usage":true},"model":"m","str\u0065am":true}`},
	}
	for _, tc := range tests {
		f, err := Parse([]byte(tc.in), Chat, DefaultLimits())
		if err != nil {
			t.Fatalf("%s: %v", tc.in, err)
		}
		if got := string(f.AppendIncludeUsage(nil, []byte(tc.in))); got != tc.want {
			t.Errorf("AppendIncludeUsage(%s)\n got %s\nwant %s", tc.in, got, tc.want)
		}
		rewritten(t, []byte(tc.in), Chat, DefaultLimits(), &f, Rewrite{IncludeUsage: true})
	}
}

func TestAppendRewriteMaxTokens(t *testing.T) {
	tests := []struct {
		ep      Endpoint
		in      string
		cap     int64
		want    Rewrite
		wantOut string
	}{
		{Chat, `{"model":"m","messages":[]}`, 1024, Rewrite{MaxTokens: 1024}, `{"max_tokens":1024,"model":"m","messages":[]}`},
		{Chat, `{"model":"m","max_tokens":null,"max_completion_tokens":null}`, 300, Rewrite{MaxTokens: 300}, `{"model":"m","max_tokens":300,"max_completion_tokens":null}`},
		{Chat, `{"model":"m","max_tok\u0065ns" : null ,"stream":true}`, 5, Rewrite{IncludeUsage: true, MaxTokens: 5}, `{"stream_options":{"include_usage":true},"model":"m","max_tok\u0065ns" : 5 ,"stream":true}`},
		{Completions, `{"stream":true,"model":"m","stream_options":{"x":1},"max_tokens":null}`, 7, Rewrite{IncludeUsage: true, MaxTokens: 7}, `{"stream":true,"model":"m","stream_options":{"include_usage":true,"x":1},"max_tokens":7}`},
		{Completions, `{"model":"m","max_tokens":null,"stream":true,"stream_options":null}`, 7, Rewrite{IncludeUsage: true, MaxTokens: 7}, `{"model":"m","max_tokens":7,"stream":true,"stream_options":{"include_usage":true}}`},
		{Chat, `{"model":"m","max_completion_tokens":10}`, 1024, Rewrite{}, ``},
		{Chat, `{"model":"m","max_tokens":0}`, 1024, Rewrite{}, ``},
		{Chat, `{"model":"m"}`, 0, Rewrite{}, ``},
		{Embeddings, `{"model":"m","input":"x"}`, 1024, Rewrite{}, ``},
	}
	for _, tc := range tests {
		f, err := Parse([]byte(tc.in), tc.ep, DefaultLimits())
		if err != nil {
			t.Fatalf("%s: %v", tc.in, err)
		}
		r := f.Rewrites(tc.cap)
		if r != tc.want {
			t.Errorf("Rewrites(%s, %d) = %+v, want %+v", tc.in, tc.cap, r, tc.want)
			continue
		}
		if r == (Rewrite{}) {
			continue
		}
		if got := string(f.AppendRewrite(nil, []byte(tc.in), r)); got != tc.wantOut {
			t.Errorf("AppendRewrite(%s)\n got %s\nwant %s", tc.in, got, tc.wantOut)
		}
		rewritten(t, []byte(tc.in), tc.ep, DefaultLimits(), &f, r)
	}
}

// The grammar is json.Valid's, plus UTF-8 and surrogate checks.
var grammarSamples = []string{
	`{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true}`,
	`{}`, ` { } `, `{"a":{}}`, `{"a":[]}`, `{"a":[1,2,{"b":[true,false,null]}]}`,
	`{"s":"\"\\\/\b\f\n\r\t\u00e9\uD83D\uDE00"}`, `{"n":[0,-0,1.5,-2e10,3E+2,4e-3,10.25]}`,
	`[1,2]`, `"x"`, `12`, `null`, ` true `,
	``, ` `, `{`, `}`, `{"a"}`, `{"a":}`, `{"a":1,}`, `{,"a":1}`, `{"a":1 "b":2}`, `{"a" 1}`,
	`{"a":1}}`, `{"a":1} x`, `{"a":[1,]}`, `{"a":[,1]}`, `{"a":[1 2]}`, `{"a":tru}`, `{"a":nul}`,
	`{"a":01}`, `{"a":1.}`, `{"a":.5}`, `{"a":-}`, `{"a":1e}`, `{"a":1e+}`, `{"a":+1}`, `{"a":0x10}`,
	`{"a":"\x"}`, `{"a":"\u12"}`, `{"a":"\u12g4"}`, "{\"a\":\"tab\there\"}",
	`{"a":"unterminated}`, `{a:1}`, `{'a':1}`, `{"a":NaN}`, `{"a":[}`, `{"a":{]}`, `[1}`, `{"a":1]`,
	`{"a":{"b":{"c":[[[[]]]]}}}`, `{"":""}`, `{"a":"}"}`, `{"a":"\\"}`, `{"a":"\\\"}`,
	`{"messages":[1,]}`, `{"messages":[1 2]}`, `{"messages":[}`, `{"stream_options":{"a":1,}}`,
	`{"stream_options":{"a" 1}}`, `{"stream_options":{,}}`, `{"stream_options":{"a":1]}`,
	`{"model":"m" , }`, `{"model":"m" "x":1}`, `{"model" "m"}`, `{"n":1.}`, `{"max_tokens":-}`,
	`{"model":"\u00"}`, `{"model":"abc`, `{"model":"abcdefghijklmnop\`, `{"model":"abcdefgh`,
}

func TestScannerMatchesJSONValid(t *testing.T) {
	for _, s := range grammarSamples {
		for _, ep := range []Endpoint{Chat, Completions, Embeddings} {
			_, err := Parse([]byte(s), ep, Limits{})
			bad := err != nil && (strings.HasPrefix(err.Error(), "request body is not valid JSON") ||
				strings.HasPrefix(err.Error(), "request body is empty"))
			if want := json.Valid([]byte(s)); bad == want {
				t.Errorf("Parse(%q) = %v, json.Valid = %v", s, err, want)
			}
		}
	}
}

func TestUnquote(t *testing.T) {
	for _, s := range []string{`""`, `"abc"`, `"\"\\\/\b\f\n\r\t"`, `"\u00e9\u20ac\ud83d\ude00"`, `"\ud800"`, `"\udc00x"`,
		`"\ud83d\u0041"`, `"\ud83dA"`, `"é\u0000"`} {
		var want string
		if err := json.Unmarshal([]byte(s), &want); err != nil {
			t.Fatal(err)
		}
		if got := string(unquote(nil, []byte(s))); got != want {
			t.Errorf("unquote(%s) = %q, want %q", s, got, want)
		}
	}
}
