package knowledge

import (
	"fmt"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/maas-platform/maas/control/internal/file"
)

func TestChunkText(t *testing.T) {
	var words []string
	for i := range 2000 { // no repeated substring, so each chunk's position is unique
		words = append(words, fmt.Sprintf("%s%d", []string{"alpha", "be", "gamma", "delta\n", "epsilonic", "ζήτα"}[i%6], i))
	}
	text := strings.Join(words, " ")
	for _, c := range []struct{ max, overlap int }{{100, 50}, {100, 0}, {800, 400}, {4096, 2048}, {250, 13}} {
		chunks := chunkText(text, c.max, c.overlap)
		if len(chunks) == 0 {
			t.Fatal("no chunks")
		}
		pos := 0 // each chunk is a substring of text, in order, together covering it
		prevEnd := 0
		for i, ch := range chunks {
			if got := file.EstimateTokens(len(ch)); got > int64(c.max) {
				t.Fatalf("max %d: chunk %d has %d tokens", c.max, i, got)
			}
			at := strings.Index(text[pos:], ch)
			if at < 0 {
				t.Fatalf("max %d: chunk %d is not a later substring of the text", c.max, i)
			}
			start := pos + at
			if i > 0 {
				if start > prevEnd+1 {
					t.Fatalf("max %d: gap before chunk %d", c.max, i)
				}
				overlap := max(0, prevEnd-start)
				if file.EstimateTokens(overlap) > int64(c.overlap) {
					t.Fatalf("max %d: chunk %d overlaps %d bytes, more than %d tokens", c.max, i, overlap, c.overlap)
				}
				// The overlap is as large as the words allow: one more word would exceed it.
				if c.overlap > 0 && overlap == 0 {
					t.Fatalf("max %d overlap %d: chunk %d does not overlap", c.max, c.overlap, i)
				}
			}
			pos, prevEnd = start+1, start+len(ch)
		}
		if prevEnd != len(text) {
			t.Fatalf("max %d: the chunks end at %d of %d", c.max, prevEnd, len(text))
		}
	}
}

func TestChunkLongWord(t *testing.T) {
	word := strings.Repeat("é", 1000) // 2000 bytes, 500 tokens
	chunks := chunkText("start "+word+" end", 100, 0)
	for _, ch := range chunks {
		if !utf8.ValidString(ch) || file.EstimateTokens(len(ch)) > 100 {
			t.Fatalf("bad chunk %q", ch)
		}
	}
	if got := strings.Join(chunks, ""); strings.ReplaceAll(got, " ", "") != "start"+word+"end" {
		t.Fatalf("chunks lose text")
	}
}
