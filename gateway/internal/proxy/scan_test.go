package proxy

import (
	"encoding/json"
	"testing"
)

func TestInjectIncludeUsage(t *testing.T) {
	tests := []struct{ in, want string }{
		{`{"model":"m","stream":true}`, `{"stream_options":{"include_usage":true},"model":"m","stream":true}`},
		{` { "model" : "m" , "stream_options" : {"include_usage":false} }`, ` { "model" : "m" , "stream_options" : {"include_usage":true} }`},
		{`{"stream_options":{"x":1,"include_usage":false,"y":[1,{"z":"}"}]},"model":"m"}`, `{"stream_options":{"include_usage":true,"x":1,"y":[1,{"z":"}"}]},"model":"m"}`},
		{`{"stream_options":null,"model":"m"}`, `{"stream_options":{"include_usage":true},"model":"m"}`},
	}
	for _, tc := range tests {
		s, e := -1, -1
		body := []byte(tc.in)
		eachMember(body, func(k []byte, a, b int) bool {
			if string(k) == "stream_options" {
				s, e = a, b
			}
			return true
		})
		got := string(injectIncludeUsage(nil, body, s, e))
		if got != tc.want {
			t.Errorf("inject(%s)\n got %s\nwant %s", tc.in, got, tc.want)
		}
		if !json.Valid([]byte(got)) {
			t.Errorf("invalid JSON %s", got)
		}
	}
}

func TestMemberAndValues(t *testing.T) {
	b := []byte(`{"a":"x\"}","b":{"c":[1,2,{"d":"]"}]},"model":"gpt","n":12,"f":1.0,"neg":-3,"usage":{"prompt_tokens":5,"completion_tokens":7}}`)
	if got := string(member(b, "model")); got != `"gpt"` {
		t.Errorf("model %s", got)
	}
	if got := string(member(b, "b")); got != `{"c":[1,2,{"d":"]"}]}` {
		t.Errorf("b %s", got)
	}
	if n, ok := intValue(member(b, "n")); !ok || n != 12 {
		t.Errorf("n %d %v", n, ok)
	}
	if n, ok := intValue(member(b, "f")); !ok || n != 1 {
		t.Errorf("f %d %v", n, ok)
	}
	if n, ok := intValue(member(b, "neg")); !ok || n != -3 {
		t.Errorf("neg %d %v", n, ok)
	}
	if _, ok := stringValue(member(b, "a")); ok {
		t.Error("escaped string must not be returned raw")
	}
	u := parseUsage(member(b, "usage"))
	if !u.ok || u.prompt != 5 || u.completion != 7 {
		t.Errorf("usage %+v", u)
	}
	if member(b, "missing") != nil {
		t.Error("missing member found")
	}
}

func TestChunkFields(t *testing.T) {
	tests := []struct {
		chunk     string
		empty     bool
		wantUsage string
	}{
		{`{"id":"c","choices":[{"index":0,"delta":{"content":"hi"}}]}`, false, ""},
		{`{"id":"c","choices":[],"usage":{"prompt_tokens":7,"completion_tokens":2}}`, true, `{"prompt_tokens":7,"completion_tokens":2}`},
		{`{"usage":{"prompt_tokens":1},"choices":[ ]}`, true, `{"prompt_tokens":1}`},
		{`{"choices":[{"delta":{"content":"\"usage\": no"}}],"usage":null}`, false, ""},
		{`{"choices":[{"delta":{"content":"the \"usage\" word"}}]}`, false, ""},
		{`{"choices":[{"delta":{"content":"x"}}],"usage":{"prompt_tokens":3,"completion_tokens":4}}`, false, `{"prompt_tokens":3,"completion_tokens":4}`},
		{`{"id":"c"}`, true, ""},
		{`{"choices":null}`, false, ""},
		{` { "choices" : [ ] , "usage" : { "prompt_tokens" : 5 } } `, true, `{ "prompt_tokens" : 5 }`},
		{`{"choices":[{"delta":{"content":"usage"}}],"usage":{"prompt_tokens":2}}`, false, `{"prompt_tokens":2}`},
		{`{"choices":[{"delta":{"content":"usage"}}]}`, false, ""},
		{`{"choices":[{"delta":{"content":"x"}}],"usage":null}`, false, ""},
		{`{"usage" : null,"choices":[]}`, true, ""},
		{`[1]`, true, ""},
		{``, true, ""},
	}
	for _, tc := range tests {
		empty, usage := chunkFields([]byte(tc.chunk))
		if string(usage) == "null" { // a null usage is as good as none
			usage = nil
		}
		if empty != tc.empty || string(usage) != tc.wantUsage {
			t.Errorf("chunkFields(%s) = %v, %q; want %v, %q", tc.chunk, empty, usage, tc.empty, tc.wantUsage)
		}
	}
}

func TestSkipString(t *testing.T) {
	tests := []struct {
		in   string
		want int // index after the string
	}{
		{`"abc",`, 5},
		{`""`, 2},
		{`"a\"b"x`, 6},
		{`"a\\"x`, 5},
		{`"a\\\"b"`, 8},
		{`"\\\\"`, 6},
		{`"unterminated`, 13},
		{`"ends in a backslash\`, 21},
	}
	for _, tc := range tests {
		if got := skipString([]byte(tc.in), 0); got != tc.want {
			t.Errorf("skipString(%s) = %d, want %d", tc.in, got, tc.want)
		}
	}
}

// skipStringRef is the byte-at-a-time definition skipString must match.
func skipStringRef(b []byte, i int) int {
	i++
	for i < len(b) {
		switch b[i] {
		case '\\':
			i += 2
		case '"':
			return i + 1
		default:
			i++
		}
	}
	return len(b)
}

func FuzzSkipString(f *testing.F) {
	for _, s := range []string{`"abc"`, `"a\"b"`, `"a\\"`, `"\\\"x\\"`, `"\`, `"`, `"a\\\\\"`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) == 0 || b[0] != '"' {
			return
		}
		if got, want := skipString(b, 0), skipStringRef(b, 0); got != want {
			t.Fatalf("skipString(%q) = %d, want %d", b, got, want)
		}
	})
}
