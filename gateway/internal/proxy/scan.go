package proxy

import (
	"bytes"
	"strconv"
)

// The stream relay reads only a few top-level fields of a backend's answer or stream chunk.
// These helpers scan JSON bytes without decoding them and never allocate; they assume the
// input is valid JSON from a backend (requests are read by reqbody, with a decoder's
// semantics).

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

func skipSpace(b []byte, i int) int {
	for i < len(b) && isSpace(b[i]) {
		i++
	}
	return i
}

// skipString returns the index after the string starting at b[i] == '"'. It jumps from
// quote to quote (bytes.IndexByte) and counts the backslashes before each.
func skipString(b []byte, i int) int {
	start := i + 1
	i = start
	for {
		j := bytes.IndexByte(b[i:], '"')
		if j < 0 {
			return len(b)
		}
		q := i + j
		n := 0
		for m := q - 1; m >= start && b[m] == '\\'; m-- {
			n++
		}
		if n%2 == 0 {
			return q + 1
		}
		i = q + 1
	}
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

// chunkFields reads what the gateway needs of a stream chunk: whether its choices are
// missing or empty, and the raw value of its usage (nil when absent). It stops at
// "choices" unless the chunk may carry a usage object: the token text after it is not
// scanned.
func chunkFields(b []byte) (emptyChoices bool, usage []byte) {
	wantUsage := mayHaveUsage(b)
	emptyChoices = true
	seenChoices := false
	i := skipSpace(b, 0)
	if i >= len(b) || b[i] != '{' {
		return true, nil
	}
	i++
	for {
		i = skipSpace(b, i)
		if i >= len(b) || b[i] == '}' {
			return emptyChoices, usage
		}
		if b[i] == ',' {
			i++
			continue
		}
		if b[i] != '"' {
			return emptyChoices, usage
		}
		ke := skipString(b, i)
		key := b[i+1 : max(ke-1, i+1)]
		i = skipSpace(b, ke)
		if i >= len(b) || b[i] != ':' {
			return emptyChoices, usage
		}
		i = skipSpace(b, i+1)
		switch string(key) {
		case "choices":
			seenChoices = true
			emptyChoices = i < len(b) && b[i] == '[' && skipSpace(b, i+1) < len(b) && b[skipSpace(b, i+1)] == ']'
			if !wantUsage || usage != nil {
				return emptyChoices, usage
			}
		case "usage":
			e := skipValue(b, i)
			usage = b[i:e]
			if seenChoices {
				return emptyChoices, usage
			}
			i = e
			continue
		}
		i = skipValue(b, i)
	}
}

var usageKey = []byte(`"usage"`)

// mayHaveUsage reports whether chunk b may hold a usage object. `"usage"` cannot occur
// inside a JSON string (its quotes would be escaped) except as a whole string value, so
// when it occurs once and is not a key, or is a key whose value is null (what engines send
// in every chunk once usage is asked for), there is no usage to read.
func mayHaveUsage(b []byte) bool {
	i := bytes.Index(b, usageKey)
	if i < 0 {
		return false
	}
	j := i + len(usageKey)
	if bytes.Contains(b[j:], usageKey) {
		return true // more than one: let the scan decide
	}
	j = skipSpace(b, j)
	if j >= len(b) || b[j] != ':' {
		return false
	}
	j = skipSpace(b, j+1)
	return !(len(b)-j >= 4 && string(b[j:j+4]) == "null")
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

// appendWithout appends object b to dst without its top-level member key (and the comma
// that separated it), or b unchanged when it has no such member.
func appendWithout(dst, b []byte, key string) []byte {
	ks, ve := -1, -1
	eachMember(b, func(k []byte, s, e int) bool {
		if string(k) == key {
			ks, ve = cap(b)-cap(k)-1, e // k is a subslice of b: its quote is at ks
			return false
		}
		return true
	})
	if ks < 0 {
		return append(dst, b...)
	}
	i := ks
	for i > 0 && isSpace(b[i-1]) {
		i--
	}
	if i > 0 && b[i-1] == ',' { // not the first member: drop the comma before it
		return append(append(dst, b[:i-1]...), b[ve:]...)
	}
	j := skipSpace(b, ve)
	if j < len(b) && b[j] == ',' {
		j++
	}
	return append(append(dst, b[:ks]...), b[j:]...)
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
