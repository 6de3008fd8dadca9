package reqbody

import (
	"bytes"
	"encoding/json"
	"math"
	"strconv"
	"strings"
	"unicode/utf8"
)

// The oracle reads a body the way an engine does, with encoding/json: keys decoded, exact
// and case-sensitive, the last duplicate winning (map[string]json.RawMessage). It says what
// Parse must do: refuse (and for which reasons) or accept with which fields.

type verdict struct {
	kind   string          // "", "empty", "syntax", "object", "encoding", "field"
	params map[string]bool // kind "field": the params Parse may name
	prompt []byte          // the prompt field's raw value
	read
}

// read is what an accepted body says.
type read struct {
	model   string
	stream  bool
	usage   bool
	maxTok  int64
	maxComp int64
	n       int64
	msgs    int
	inputs  int
	prompts int
}

type member struct {
	key string
	raw json.RawMessage
}

// members decodes the members of a JSON object in order.
func members(b []byte) ([]member, bool) {
	dec := json.NewDecoder(bytes.NewReader(b))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return nil, false
	}
	var out []member
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return nil, false
		}
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return nil, false
		}
		out = append(out, member{t.(string), raw})
	}
	return out, true
}

// loneSurrogate reports whether a string of the valid JSON b has a \u escape that decodes
// to half a surrogate pair without the other half (byte at a time, for reference).
func loneSurrogate(b []byte) bool {
	in := false
	for i := 0; i < len(b); i++ {
		c := b[i]
		if !in {
			in = c == '"'
			continue
		}
		switch c {
		case '"':
			in = false
		case '\\':
			if b[i+1] != 'u' {
				i++
				continue
			}
			r, _ := strconv.ParseUint(string(b[i+2:i+6]), 16, 32)
			i += 5
			switch {
			case r >= 0xDC00 && r < 0xE000:
				return true
			case r >= 0xD800 && r < 0xDC00:
				if i+6 >= len(b) || b[i+1] != '\\' || b[i+2] != 'u' {
					return true
				}
				r2, _ := strconv.ParseUint(string(b[i+3:i+7]), 16, 32)
				if r2 < 0xDC00 || r2 >= 0xE000 {
					return true
				}
				i += 6
			}
		}
	}
	return false
}

func oracleInt(raw []byte) (int64, bool) {
	var num json.Number
	if raw[0] != '-' && (raw[0] < '0' || raw[0] > '9') || json.Unmarshal(raw, &num) != nil {
		return 0, false
	}
	if n, err := strconv.ParseInt(string(num), 10, 64); err == nil {
		return n, true
	}
	x, err := strconv.ParseFloat(string(num), 64)
	if err != nil || x != math.Trunc(x) || x < -(1<<63) || x >= 1<<63 {
		return 0, false
	}
	return int64(x), true
}

func oracle(body []byte, ep Endpoint, lim Limits) verdict {
	v := verdict{params: map[string]bool{}, read: read{maxTok: -1, maxComp: -1, n: 1}}
	if len(bytes.TrimLeft(body, " \t\r\n")) == 0 {
		v.kind = "empty"
		return v
	}
	if !json.Valid(body) {
		v.kind = "syntax"
		return v
	}
	ms, ok := members(body)
	if !ok {
		v.kind = "object"
		return v
	}
	if !utf8.Valid(body) || loneSurrogate(body) {
		v.kind = "encoding"
		return v
	}
	names := map[string]bool{}
	for i, name := range keyNames {
		if interpreted[ep]&(1<<i) != 0 {
			names[name] = true
		}
	}
	fail := func(param string) { v.params[param] = true }
	last := map[string][]byte{}
	for _, m := range ms {
		if names[m.key] {
			if _, dup := last[m.key]; dup {
				fail(m.key)
			}
			last[m.key] = m.raw
			continue
		}
		for name := range names {
			if strings.EqualFold(m.key, name) {
				fail(m.key)
			}
		}
	}
	if raw, ok := last["model"]; !ok || string(raw) == "null" {
		fail("model")
	} else if json.Unmarshal(raw, &v.model) != nil || v.model == "" || strings.IndexByte(v.model, 0) >= 0 {
		fail("model")
	}
	if raw, ok := last["stream"]; ok {
		switch string(raw) {
		case "true":
			v.stream = ep != Embeddings
		case "false", "null":
		default:
			fail("stream")
		}
	}
	if raw, ok := last["stream_options"]; ok && string(raw) != "null" {
		so, isObj := members(raw)
		if !isObj {
			fail("stream_options")
		}
		seen := false
		for _, m := range so {
			if m.key != includeUsage {
				if strings.EqualFold(m.key, includeUsage) {
					fail("stream_options." + m.key)
				}
				continue
			}
			if seen {
				fail("stream_options.include_usage")
			}
			seen = true
			switch string(m.raw) {
			case "true":
				v.usage = true
			case "false", "null":
				v.usage = false
			default:
				fail("stream_options.include_usage")
			}
		}
	}
	for _, k := range []struct {
		name string
		dst  *int64
		min  int64
	}{{"max_tokens", &v.maxTok, 0}, {"max_completion_tokens", &v.maxComp, 0}, {"n", &v.n, 1}} {
		raw, ok := last[k.name]
		if !ok || !names[k.name] || string(raw) == "null" {
			continue
		}
		if n, ok := oracleInt(raw); ok && n >= k.min {
			*k.dst = n
		} else {
			fail(k.name)
		}
	}
	for _, name := range []string{"messages", "prompt", "input"} {
		raw, ok := last[name]
		if !ok || !names[name] {
			continue
		}
		v.prompt = raw
		var arr []json.RawMessage
		isArr := json.Unmarshal(raw, &arr) == nil && raw[0] == '['
		switch {
		case name == "messages" && isArr:
			v.msgs = len(arr)
		case name == "input" && isArr:
			v.inputs = len(arr)
		case name == "input" && string(raw) != "null":
			v.inputs = 1
		case name == "prompt" && isArr && len(arr) > 0 && (arr[0][0] == '"' || arr[0][0] == '['):
			v.prompts = len(arr)
		case name == "prompt" && string(raw) != "null" && !(isArr && len(arr) == 0):
			v.prompts = 1
		}
	}
	if lim.MaxN > 0 && v.n > lim.MaxN {
		fail("n")
	}
	if lim.MaxMessages > 0 && v.msgs > lim.MaxMessages {
		fail("messages")
	}
	if lim.MaxInputs > 0 && v.inputs > lim.MaxInputs {
		fail("input")
	}
	if lim.MaxInputs > 0 && v.prompts > lim.MaxInputs {
		fail("prompt")
	}
	if len(v.params) > 0 {
		v.kind = "field"
	}
	return v
}
