package proxy

// A request body is validated in the same pass that reads its top-level members: a
// separate json.Valid over the whole body cost as much again. The grammar is exactly
// encoding/json's (RFC 8259; bytes of strings are not checked for UTF-8, as json.Valid
// does not), including its nesting limit. Only when a body is invalid is it handed to
// encoding/json, for an error message naming the problem.

// maxNesting is encoding/json's limit on nested arrays and objects.
const maxNesting = 10000

// scanObject validates body as one JSON value and, when it is an object, calls fn for each
// of its members in order: key without quotes (raw, escapes untouched) and the value's byte
// range. valid reports whether body is JSON; isObj whether it is an object. fn is called
// for the members before an error, too.
func scanObject(body []byte, fn func(key []byte, start, end int)) (valid, isObj bool) {
	i := skipSpace(body, 0)
	if i >= len(body) {
		return false, false
	}
	if body[i] != '{' {
		e, ok := validValue(body, i, 0)
		return ok && skipSpace(body, e) == len(body), false
	}
	i = skipSpace(body, i+1)
	if i < len(body) && body[i] == '}' {
		return skipSpace(body, i+1) == len(body), true
	}
	for {
		ke, ok := validString(body, i)
		if !ok {
			return false, true
		}
		key := body[i+1 : ke-1]
		i = skipSpace(body, ke)
		if i >= len(body) || body[i] != ':' {
			return false, true
		}
		s := skipSpace(body, i+1)
		e, ok := validValue(body, s, 1)
		if !ok {
			return false, true
		}
		fn(key, s, e)
		i = skipSpace(body, e)
		if i >= len(body) {
			return false, true
		}
		switch body[i] {
		case ',':
			i = skipSpace(body, i+1)
		case '}':
			return skipSpace(body, i+1) == len(body), true
		default:
			return false, true
		}
	}
}

// validValue checks the JSON value starting at b[i], inside depth open containers, and
// returns the index after it. Nested arrays and objects are walked iteratively (no
// recursion on hostile input).
func validValue(b []byte, i, depth int) (int, bool) {
	var stackArr [32]byte
	stack := stackArr[:0] // '{' or '[' per open container
	for {
		// A value starts at i.
		i = skipSpace(b, i)
		if i >= len(b) {
			return i, false
		}
		var ok bool
		switch c := b[i]; {
		case c == '{' || c == '[':
			if depth+len(stack) >= maxNesting {
				return i, false
			}
			i = skipSpace(b, i+1)
			if i < len(b) && b[i] == c+2 { // '{'+2 == '}', '['+2 == ']'
				i++
				ok = true
				break
			}
			stack = append(stack, c)
			if c == '{' {
				if i, ok = validKey(b, i); !ok {
					return i, false
				}
			}
			continue // the first member's or element's value
		case c == '"':
			i, ok = validString(b, i)
		case c == 't':
			i, ok = literal(b, i, "true")
		case c == 'f':
			i, ok = literal(b, i, "false")
		case c == 'n':
			i, ok = literal(b, i, "null")
		case c == '-' || (c >= '0' && c <= '9'):
			i, ok = validNumber(b, i)
		}
		if !ok {
			return i, false
		}
		// After a value: close containers, or go on to the next member or element.
		for {
			if len(stack) == 0 {
				return i, true
			}
			i = skipSpace(b, i)
			if i >= len(b) {
				return i, false
			}
			top := stack[len(stack)-1]
			if b[i] == top+2 {
				i++
				stack = stack[:len(stack)-1]
				continue
			}
			if b[i] != ',' {
				return i, false
			}
			i++
			if top == '{' {
				if i, ok = validKey(b, skipSpace(b, i)); !ok {
					return i, false
				}
			}
			break
		}
	}
}

// validKey checks `"key" :` at b[i] and returns the index after the colon.
func validKey(b []byte, i int) (int, bool) {
	i, ok := validString(b, i)
	if !ok {
		return i, false
	}
	i = skipSpace(b, i)
	if i >= len(b) || b[i] != ':' {
		return i, false
	}
	return i + 1, true
}

// validString checks the string starting at b[i] and returns the index after it.
func validString(b []byte, i int) (int, bool) {
	if i >= len(b) || b[i] != '"' {
		return i, false
	}
	i++
	for i < len(b) {
		c := b[i]
		switch {
		case c == '"':
			return i + 1, true
		case c < 0x20:
			return i, false
		case c == '\\':
			if i+1 >= len(b) {
				return i, false
			}
			switch b[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i += 2
			case 'u':
				if i+6 > len(b) || !isHex(b[i+2]) || !isHex(b[i+3]) || !isHex(b[i+4]) || !isHex(b[i+5]) {
					return i, false
				}
				i += 6
			default:
				return i, false
			}
		default:
			i++
		}
	}
	return i, false
}

func isHex(c byte) bool {
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')
}

func literal(b []byte, i int, lit string) (int, bool) {
	if len(b)-i < len(lit) || string(b[i:i+len(lit)]) != lit {
		return i, false
	}
	return i + len(lit), true
}

// validNumber checks the number starting at b[i]: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
func validNumber(b []byte, i int) (int, bool) {
	if b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case i < len(b) && b[i] >= '1' && b[i] <= '9':
		i = digits(b, i)
	default:
		return i, false
	}
	if i < len(b) && b[i] == '.' {
		j := digits(b, i+1)
		if j == i+1 {
			return j, false
		}
		i = j
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		j := digits(b, i)
		if j == i {
			return j, false
		}
		i = j
	}
	return i, true
}

func digits(b []byte, i int) int {
	for i < len(b) && b[i] >= '0' && b[i] <= '9' {
		i++
	}
	return i
}
