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
		var so []byte
		s, e := -1, -1
		body := []byte(tc.in)
		eachMember(body, func(k []byte, a, b int) bool {
			if string(k) == "stream_options" {
				so, s, e = body[a:b], a, b
			}
			return true
		})
		got := string(injectIncludeUsage(nil, body, so, s, e))
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
