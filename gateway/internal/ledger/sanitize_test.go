package ledger

import (
	"math"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestSanitize(t *testing.T) {
	long := strings.Repeat("é", 200) // 400 bytes
	for _, tc := range []struct {
		name string
		in   string
		max  int
		want string
	}{
		{"clean", "sim-chat", 256, "sim-chat"},
		{"invalid UTF-8", "a\xffb\xc3", 256, "a\uFFFDb\uFFFD"},
		{"NUL", "a\x00b", 256, "ab"},
		{"cut at a character boundary", long, 255, strings.Repeat("é", 127)},
		{"only NUL", "\x00\x00", 64, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := cleanText(tc.in, tc.max)
			if got != tc.want || !utf8.ValidString(got) || len(got) > tc.max || strings.IndexByte(got, 0) >= 0 {
				t.Errorf("cleanText(%q, %d) = %q, want %q", tc.in, tc.max, got, tc.want)
			}
		})
	}
	r := Record{Model: "\x00" + long + long, RequestID: "", PromptTokens: math.MaxInt64, CompletionTokens: -5, ErrorType: strings.Repeat("x", 100)}
	sanitize(&r)
	if len(r.Model) > maxModelBytes || r.RequestID == "" || r.PromptTokens != math.MaxInt32 || r.CompletionTokens != 0 || len(r.ErrorType) != maxErrorTypeBytes {
		t.Errorf("sanitized: model %d bytes, id %q, tokens %d/%d, error type %d bytes", len(r.Model), r.RequestID, r.PromptTokens, r.CompletionTokens, len(r.ErrorType))
	}
	r2 := Record{}
	sanitize(&r2)
	if r2.RequestID == r.RequestID {
		t.Errorf("two records without an id got the same one: %q", r.RequestID)
	}
}

func BenchmarkSanitizeClean(b *testing.B) {
	r := Record{RequestID: "gw-abc-123", Model: "sim-chat", Backend: "sim-1", Endpoint: "/v1/chat/completions"}
	b.ReportAllocs()
	for b.Loop() {
		x := r
		sanitize(&x)
	}
}
