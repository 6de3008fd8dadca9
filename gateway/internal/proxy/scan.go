package proxy

import (
	"bytes"
	"strconv"
)

// The hot path reads only a few top-level fields of a request or response body. These
// helpers scan JSON bytes without decoding them; they assume the input is valid JSON
// (requests are checked with json.Valid first) and never allocate.

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

func skipSpace(b []byte, i int) int {
	for i < len(b) && isSpace(b[i]) {
		i++
	}
	return i
}

// skipString returns the index after the string starting at b[i] == '"'.
func skipString(b []byte, i int) int {
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

// skipValue returns the index after the value starting at b[i].
func skipValue(b []byte, i int) int {
	if i >= len(b) {
		return i
	}
	switch b[i] {
	case '"':
		return skipString(b, i)
	case '{', '[':
		depth := 0
		for i < len(b) {
			switch b[i] {
			case '"':
				i = skipString(b, i)
				continue
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return i + 1
				}
			}
			i++
		}
		return len(b)
	default:
		for i < len(b) {
			switch b[i] {
			case ',', '}', ']', ' ', '\t', '\n', '\r':
				return i
			}
			i++
		}
		return i
	}
}

// eachMember calls fn for each member of the object b (which must start, after spaces,
// with '{'): key without quotes (raw, escapes untouched) and the value's byte range. fn
// returns false to stop.
func eachMember(b []byte, fn func(key []byte, start, end int) bool) bool {
	i := skipSpace(b, 0)
	if i >= len(b) || b[i] != '{' {
		return false
	}
	i++
	for {
		i = skipSpace(b, i)
		if i >= len(b) {
			return false
		}
		if b[i] == '}' {
			return true
		}
		if b[i] == ',' {
			i++
			continue
		}
		if b[i] != '"' {
			return false
		}
		ke := skipString(b, i)
		key := b[i+1 : max(ke-1, i+1)]
		i = skipSpace(b, ke)
		if i >= len(b) || b[i] != ':' {
			return false
		}
		i = skipSpace(b, i+1)
		ve := skipValue(b, i)
		if !fn(key, i, ve) {
			return true
		}
		i = ve
	}
}

// member returns the raw value of the top-level member key of object b, or nil.
func member(b []byte, key string) []byte {
	var out []byte
	eachMember(b, func(k []byte, s, e int) bool {
		if string(k) == key {
			out = b[s:e]
			return false
		}
		return true
	})
	return out
}

// stringValue returns the contents of a JSON string value without quotes; ok is false
// when v is not a string or holds escapes (callers then decode it properly).
func stringValue(v []byte) (s []byte, ok bool) {
	if len(v) < 2 || v[0] != '"' || v[len(v)-1] != '"' {
		return nil, false
	}
	s = v[1 : len(v)-1]
	if bytes.IndexByte(s, '\\') >= 0 {
		return nil, false
	}
	return s, true
}

// intValue parses an integer value; ok is false for anything else.
func intValue(v []byte) (int64, bool) {
	if len(v) == 0 || len(v) > 19 {
		return 0, false
	}
	var n int64
	neg := false
	for i, c := range v {
		if i == 0 && c == '-' {
			neg = true
			continue
		}
		if c < '0' || c > '9' {
			// accept floats with an integral value like 10.0
			f, err := strconv.ParseFloat(string(v), 64)
			if err != nil || f != float64(int64(f)) {
				return 0, false
			}
			return int64(f), true
		}
		n = n*10 + int64(c-'0')
	}
	if neg {
		n = -n
	}
	return n, true
}

// usage is what a backend reports in "usage".
type usage struct {
	prompt, completion int64
	ok                 bool
}

// parseUsage reads prompt_tokens and completion_tokens from a usage object value.
func parseUsage(v []byte) usage {
	var u usage
	if len(v) == 0 || v[0] != '{' {
		return u
	}
	eachMember(v, func(k []byte, s, e int) bool {
		switch string(k) {
		case "prompt_tokens":
			u.prompt, u.ok = intValue(v[s:e])
		case "completion_tokens":
			u.completion, _ = intValue(v[s:e])
		}
		return true
	})
	return u
}
