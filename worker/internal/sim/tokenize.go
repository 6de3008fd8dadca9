package sim

import (
	"unicode"
	"unicode/utf8"
)

// Tokens counts the tokens of s with the simulator's deterministic tokenizer: a run of
// ASCII letters and digits is one token, each other non-space character is one token.
func Tokens(s string) int {
	n := 0
	inWord := false
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			i++
			switch {
			case isAlnum(c):
				if !inWord {
					n++
					inWord = true
				}
				continue
			case c == ' ' || c == '\n' || c == '\t' || c == '\r' || c == '\f' || c == '\v':
			default:
				n++
			}
			inWord = false
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		i += size
		inWord = false
		if !unicode.IsSpace(r) {
			n++
		}
	}
	return n
}

func isAlnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

// promptSeed is a cheap deterministic hash of a prompt, used to pick answer lengths and words.
func promptSeed(parts ...string) uint64 {
	h := uint64(14695981039346656037)
	for _, p := range parts {
		for i := 0; i < len(p); i++ {
			h = (h ^ uint64(p[i])) * 1099511628211
		}
		h = (h ^ 0xff) * 1099511628211
	}
	return h
}
