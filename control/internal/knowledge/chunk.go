package knowledge

import (
	"unicode"
	"unicode/utf8"

	"github.com/maas-platform/maas/control/internal/file"
)

// chunkText cuts text into chunks of at most maxTokens tokens (file.EstimateTokens of their
// bytes), each starting overlap tokens before the previous one ended, cut at whitespace; a
// word longer than a chunk is cut at a rune boundary. Chunks hold the original text
// between their first and last word, line breaks included.
func chunkText(text string, maxTokens, overlap int) []string {
	type span struct{ start, end int }
	var words []span
	for i := 0; i < len(text); {
		r, n := utf8.DecodeRuneInString(text[i:])
		if unicode.IsSpace(r) {
			i += n
			continue
		}
		start := i
		for i < len(text) {
			r, n := utf8.DecodeRuneInString(text[i:])
			if unicode.IsSpace(r) {
				break
			}
			i += n
		}
		words = append(words, span{start, i})
	}
	maxBytes := maxTokens * 4 // EstimateTokens(n) <= maxTokens  <=>  n <= 4*maxTokens
	// Split words longer than a chunk.
	var ws []span
	for _, w := range words {
		for w.end-w.start > maxBytes {
			cut := w.start + maxBytes
			for cut > w.start && !utf8.RuneStart(text[cut]) {
				cut--
			}
			ws = append(ws, span{w.start, cut})
			w.start = cut
		}
		ws = append(ws, w)
	}
	var out []string
	for i := 0; i < len(ws); {
		j := i
		for j+1 < len(ws) && file.EstimateTokens(ws[j+1].end-ws[i].start) <= int64(maxTokens) {
			j++
		}
		out = append(out, text[ws[i].start:ws[j].end])
		if j == len(ws)-1 {
			break
		}
		// The next chunk starts at the earliest word k > i whose span to ws[j].end fits in
		// the overlap; with no overlap (or none fitting) it starts after j.
		next := j + 1
		for k := j; k > i; k-- {
			if file.EstimateTokens(ws[j].end-ws[k].start) > int64(overlap) {
				break
			}
			next = k
		}
		i = next
	}
	return out
}
