package reqbody

import (
	"encoding/binary"
	"unicode/utf8"
)

// The grammar is exactly encoding/json's (json.Valid), including its nesting limit, plus
// two checks json.Valid does not make: strings must be valid UTF-8, and a \u escape must not
// leave a UTF-16 surrogate unpaired. Those are reported apart from syntax errors (enc), so
// that the error names the problem and, when known, the field.

// maxNesting is encoding/json's limit on nested arrays and objects.
const maxNesting = 10000

// encoding problems found in strings (the first one is kept).
const (
	encOK        uint8 = iota
	encUTF8            // bytes that are not UTF-8
	encSurrogate       // \uD800-\uDFFF escape without its pair
)

// scanner walks one body. Its methods return the index after what they read and false on
// a syntax error.
type scanner struct {
	b   []byte
	enc uint8 // first encoding problem seen since the caller last cleared it
	// surr is the escape of the first unpaired surrogate (for the message).
	surr rune
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

func skipSpace(b []byte, i int) int {
	for i < len(b) && isSpace(b[i]) {
		i++
	}
	return i
}

// plain[c] is true for the bytes that stand for themselves in a string and need no check:
// printable ASCII but '"' and '\\'.
var plain = func() (t [256]bool) {
	for c := 0x20; c < 0x80; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

const (
	ones  = 0x0101010101010101
	highs = 0x8080808080808080
)

// plain8 reports whether the eight bytes of x are all plain (SWAR: a byte is not plain
// when it is ≥ 0x80, < 0x20, '"' or '\\').
func plain8(x uint64) bool {
	zero := func(v uint64) uint64 { return (v - ones) & ^v & highs } // high bit set where a byte of v is 0
	less := (x - 0x20*ones) & ^x & highs                             // where a byte is < 0x20 (x < 0x80)
	return (x&highs | less | zero(x^('"'*ones)) | zero(x^('\\'*ones))) == 0
}

// str checks the string starting at b[i] == '"' and returns the index after its closing
// quote; esc reports whether it holds escapes.
func (s *scanner) str(i int) (end int, esc, ok bool) {
	b := s.b
	if i >= len(b) || b[i] != '"' {
		return i, false, false
	}
	i++
	for {
		// The common case: runs of plain ASCII, eight bytes at a time.
		for i+8 <= len(b) && plain8(binary.LittleEndian.Uint64(b[i:])) {
			i += 8
		}
		for i < len(b) && plain[b[i]] {
			i++
		}
		if i >= len(b) {
			return i, esc, false
		}
		switch c := b[i]; {
		case c == '"':
			return i + 1, esc, true
		case c < 0x20:
			return i, esc, false
		case c == '\\':
			esc = true
			if i+1 >= len(b) {
				return i, esc, false
			}
			switch b[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i += 2
			case 'u':
				r, ok := hex4(b, i+2)
				if !ok {
					return i, esc, false
				}
				i += 6
				if r >= 0xD800 && r < 0xE000 {
					if r < 0xDC00 && i+6 <= len(b) && b[i] == '\\' && b[i+1] == 'u' {
						if r2, ok := hex4(b, i+2); ok && r2 >= 0xDC00 && r2 < 0xE000 {
							i += 6
							continue
						}
					}
					if s.enc == encOK {
						s.enc, s.surr = encSurrogate, r
					}
				}
			default:
				return i, esc, false
			}
		default: // c >= 0x80
			r, n := utf8.DecodeRune(b[i:])
			if r == utf8.RuneError && n == 1 && s.enc == encOK {
				s.enc = encUTF8
			}
			i += n
		}
	}
}

// hex4 reads the four hex digits at b[i:].
func hex4(b []byte, i int) (rune, bool) {
	if i+4 > len(b) {
		return 0, false
	}
	var r rune
	for _, c := range b[i : i+4] {
		switch {
		case c >= '0' && c <= '9':
			c -= '0'
		case c >= 'a' && c <= 'f':
			c = c - 'a' + 10
		case c >= 'A' && c <= 'F':
			c = c - 'A' + 10
		default:
			return 0, false
		}
		r = r<<4 | rune(c)
	}
	return r, true
}

// value checks the JSON value starting at b[i] (spaces first skipped), inside depth open
// containers, and returns the index after it. Nested arrays and objects are walked
// iteratively (no recursion on hostile input).
func (s *scanner) value(i, depth int) (int, bool) {
	b := s.b
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
				if i, ok = s.key(i); !ok {
					return i, false
				}
			}
			continue // the first member's or element's value
		case c == '"':
			i, _, ok = s.str(i)
		case c == 't':
			i, ok = literal(b, i, "true")
		case c == 'f':
			i, ok = literal(b, i, "false")
		case c == 'n':
			i, ok = literal(b, i, "null")
		case c == '-' || (c >= '0' && c <= '9'):
			i, ok = number(b, i)
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
				if i, ok = s.key(skipSpace(b, i)); !ok {
					return i, false
				}
			}
			break
		}
	}
}

// key checks `"key" :` at b[i] and returns the index after the colon.
func (s *scanner) key(i int) (int, bool) {
	i, _, ok := s.str(i)
	if !ok {
		return i, false
	}
	i = skipSpace(s.b, i)
	if i >= len(s.b) || s.b[i] != ':' {
		return i, false
	}
	return i + 1, true
}

func literal(b []byte, i int, lit string) (int, bool) {
	if len(b)-i < len(lit) || string(b[i:i+len(lit)]) != lit {
		return i, false
	}
	return i + len(lit), true
}

// number checks the number starting at b[i]: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
func number(b []byte, i int) (int, bool) {
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

// unquote appends the decoded contents of the valid string literal q (quotes included) to
// dst. An unpaired surrogate becomes U+FFFD, as in encoding/json (Parse refuses those).
func unquote(dst, q []byte) []byte {
	q = q[1 : len(q)-1]
	for i := 0; i < len(q); {
		c := q[i]
		if c != '\\' {
			dst = append(dst, c)
			i++
			continue
		}
		switch q[i+1] {
		case 'b':
			dst = append(dst, '\b')
		case 'f':
			dst = append(dst, '\f')
		case 'n':
			dst = append(dst, '\n')
		case 'r':
			dst = append(dst, '\r')
		case 't':
			dst = append(dst, '\t')
		case 'u':
			r, _ := hex4(q, i+2)
			i += 6
			if r >= 0xD800 && r < 0xDC00 && i+6 <= len(q) && q[i] == '\\' && q[i+1] == 'u' {
				if r2, _ := hex4(q, i+2); r2 >= 0xDC00 && r2 < 0xE000 {
					r = 0x10000 + (r-0xD800)<<10 + (r2 - 0xDC00)
					i += 6
				}
			}
			if r >= 0xD800 && r < 0xE000 {
				r = utf8.RuneError
			}
			dst = utf8.AppendRune(dst, r)
			continue
		default: // '"', '\\', '/'
			dst = append(dst, q[i+1])
		}
		i += 2
	}
	return dst
}
