package proxy

import (
	"testing"
)

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
