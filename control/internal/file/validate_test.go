package file

import (
	"errors"
	"strings"
	"testing"
)

func TestCheckDataset(t *testing.T) {
	const ok = `{"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Hi"},{"role":"assistant","content":"Hello!"}]}`
	tests := []struct {
		name     string
		in       string
		line     int    // 0: valid
		msg      string // part of the error
		examples int
		tokens   int64
	}{
		{name: "one example", in: ok + "\n", examples: 1, tokens: 3 + 1 + 2},
		{name: "no final newline, blank lines skipped", in: ok + "\n\n  \n" + ok, examples: 2, tokens: 12},
		{name: "weights and parts", in: `{"messages":[{"role":"user","content":[{"type":"text","text":"x"}]},{"role":"assistant","content":"a","weight":0},{"role":"user","content":"b"},{"role":"assistant","content":"c","weight":1}]}`, examples: 1, tokens: 7 + 1 + 1 + 1},
		{name: "tool call turn", in: `{"messages":[{"role":"user","content":"w?"},{"role":"assistant","content":null,"tool_calls":[{"id":"1","type":"function","function":{"name":"f","arguments":"{}"}}]},{"role":"tool","tool_call_id":"1","content":"sunny"},{"role":"assistant","content":"Sunny."}]}`, examples: 1},
		{name: "empty file", in: "", line: 1, msg: "no training examples"},
		{name: "only blank lines", in: "\n \n", line: 1, msg: "no training examples"},
		{name: "bad json on line 3", in: ok + "\n" + ok + "\n{\"messages\": [\n", line: 3, msg: "invalid JSON"},
		{name: "not an object", in: "[1]", line: 1, msg: "expected a JSON object"},
		{name: "no messages", in: `{"prompt":"x","completion":"y"}`, line: 1, msg: `missing "messages"`},
		{name: "messages not an array", in: `{"messages":"hi"}`, line: 1, msg: "array of messages"},
		{name: "empty messages", in: `{"messages":[]}`, line: 1, msg: "is empty"},
		{name: "bad role", in: ok + "\n" + `{"messages":[{"role":"bot","content":"x"},{"role":"assistant","content":"y"}]}`, line: 2, msg: `role "bot"`},
		{name: "no role", in: `{"messages":[{"content":"x"},{"role":"assistant","content":"y"}]}`, line: 1, msg: "has no role"},
		{name: "no assistant", in: `{"messages":[{"role":"user","content":"x"}]}`, line: 1, msg: "no assistant message"},
		{name: "bad weight", in: `{"messages":[{"role":"user","content":"x"},{"role":"assistant","content":"y","weight":0.5}]}`, line: 1, msg: "weight must be 0 or 1"},
		{name: "weight on user", in: `{"messages":[{"role":"user","content":"x","weight":1},{"role":"assistant","content":"y"}]}`, line: 1, msg: "only allowed on assistant"},
		{name: "content number", in: `{"messages":[{"role":"user","content":5},{"role":"assistant","content":"y"}]}`, line: 1, msg: "must be a string or an array"},
		{name: "missing content", in: `{"messages":[{"role":"user"},{"role":"assistant","content":"y"}]}`, line: 1, msg: "has no content"},
		{name: "message not object", in: `{"messages":["hi",{"role":"assistant","content":"y"}]}`, line: 1, msg: "messages[0] must be an object"},
		{name: "invalid utf-8", in: "{\"messages\":[{\"role\":\"assistant\",\"content\":\"\xff\"}]}", line: 1, msg: "UTF-8"},
		{name: "line too long", in: ok + "\n" + `{"messages":[{"role":"assistant","content":"` + strings.Repeat("x", MaxLineBytes) + `"}]}`, line: 2, msg: "longer than"},
		{name: "long line fits", in: `{"messages":[{"role":"assistant","content":"` + strings.Repeat("x", 200<<10) + `"}]}`, examples: 1, tokens: 50 << 10},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := CheckDataset(strings.NewReader(tt.in))
			if tt.line == 0 {
				if err != nil {
					t.Fatalf("CheckDataset: %v", err)
				}
				if d.Examples != tt.examples || (tt.tokens != 0 && d.Tokens != tt.tokens) {
					t.Errorf("got %+v, want %d examples, %d tokens", d, tt.examples, tt.tokens)
				}
				return
			}
			var le *LineError
			if !errors.As(err, &le) {
				t.Fatalf("CheckDataset: %v, want a LineError", err)
			}
			if le.Line != tt.line || !strings.Contains(le.Error(), tt.msg) || !strings.HasPrefix(le.Error(), "line ") {
				t.Errorf("error %q (line %d), want line %d and %q", le.Error(), le.Line, tt.line, tt.msg)
			}
		})
	}
}

func TestCleanFilename(t *testing.T) {
	for in, want := range map[string]string{
		"train.jsonl":                  "train.jsonl",
		"dir/sub/train.jsonl":          "train.jsonl",
		`C:\Users\me\train.jsonl`:      "train.jsonl",
		"a\x00b\x01c.txt":              "abc.txt",
		"bad\xffname":                  "bad\uFFFDname",
		"  spaced  ":                   "spaced",
		"..":                           "",
		"dir/":                         "",
		"":                             "",
		strings.Repeat("é", 200):       strings.Repeat("é", 127),
		"données d'entraînement.jsonl": "données d'entraînement.jsonl",
	} {
		if got := CleanFilename(in); got != want {
			t.Errorf("CleanFilename(%q) = %q, want %q", in, got, want)
		}
	}
}
