// Package textcheck tells apart text PostgreSQL stores from text it refuses: its TEXT and
// JSONB columns take valid UTF-8 without NUL (22021, 22P05 otherwise), which a request
// must be refused for (400 naming the field), not failed on (500).
package textcheck

import (
	"strings"
	"unicode/utf8"
)

// Valid reports whether s is valid UTF-8 without NUL: text PostgreSQL stores.
func Valid(s string) bool {
	return utf8.ValidString(s) && strings.IndexByte(s, 0) < 0
}

// Clean returns s as text PostgreSQL stores and a reader sees: invalid UTF-8 becomes
// U+FFFD, and control characters other than tab, newline and carriage return (NUL
// included) are dropped. A clean s is returned as it is.
func Clean(s string) string {
	if !utf8.ValidString(s) {
		s = strings.ToValidUTF8(s, "\uFFFD")
	}
	if strings.IndexFunc(s, dropped) < 0 {
		return s
	}
	return strings.Map(func(r rune) rune {
		if dropped(r) {
			return -1
		}
		return r
	}, s)
}

func dropped(r rune) bool {
	return (r < 0x20 && r != '\t' && r != '\n' && r != '\r') || r == 0x7f
}

// Cut returns at most max bytes of s, cut on a character boundary.
func Cut(s string, max int) string {
	if len(s) <= max {
		return s
	}
	for max > 0 && !utf8.RuneStart(s[max]) {
		max--
	}
	return s[:max]
}
