package sim

import (
	"hash/fnv"
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

// eachWord calls fn with the FNV-1a hash of each embedding term of s: lower-cased runs of
// ASCII letters and digits, and each non-ASCII letter or digit. Punctuation is skipped.
func eachWord(s string, fn func(h uint64)) {
	const (
		offset = 14695981039346656037
		prime  = 1099511628211
	)
	h := uint64(offset)
	inWord := false
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			i++
			if isAlnum(c) {
				if c >= 'A' && c <= 'Z' {
					c += 'a' - 'A'
				}
				h = (h ^ uint64(c)) * prime
				inWord = true
				continue
			}
			if inWord {
				fn(h)
				h, inWord = offset, false
			}
			continue
		}
		if inWord {
			fn(h)
			h, inWord = offset, false
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		i += size
		if unicode.IsLetter(r) || unicode.IsDigit(r) {
			f := fnv.New64a()
			var buf [4]byte
			f.Write(buf[:utf8.EncodeRune(buf[:], unicode.ToLower(r))])
			fn(f.Sum64())
		}
	}
	if inWord {
		fn(h)
	}
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
