package ledger

import (
	"math"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
	"unicode/utf8"
)

// Bounds of a Record's text fields, in bytes. Longer values are cut at a character boundary.
const (
	maxIDBytes        = 128 // RequestID, ClientRequestID
	maxModelBytes     = 256
	maxBackendBytes   = 128
	maxEndpointBytes  = 128
	maxErrorTypeBytes = 64
)

// fallbackSeq numbers the request ids sanitize makes up for records that came without one.
var fallbackSeq atomic.Uint64

// fallbackBase starts those ids: unique per process start.
var fallbackBase = "ledger-" + strconv.FormatInt(time.Now().UnixNano(), 36) + "-"

// sanitize makes r something PostgreSQL accepts: every text field valid UTF-8 (invalid
// bytes become U+FFFD), without NUL (removed), and within its bound; token counts and the
// status within INTEGER; a request id present (the unique key of the ledger: an empty one
// would collide with every other). Clean values are not copied.
func sanitize(r *Record) {
	r.RequestID = cleanText(r.RequestID, maxIDBytes)
	if r.RequestID == "" {
		r.RequestID = fallbackBase + strconv.FormatUint(fallbackSeq.Add(1), 36)
	}
	r.ClientRequestID = cleanText(r.ClientRequestID, maxIDBytes)
	r.Model = cleanText(r.Model, maxModelBytes)
	r.Backend = cleanText(r.Backend, maxBackendBytes)
	r.Endpoint = cleanText(r.Endpoint, maxEndpointBytes)
	r.ErrorType = cleanText(r.ErrorType, maxErrorTypeBytes)
	r.PromptTokens = clampInt32(r.PromptTokens)
	r.CompletionTokens = clampInt32(r.CompletionTokens)
	r.Status = int(clampInt32(int64(r.Status)))
}

// cleanText returns s as valid UTF-8 without NUL, at most max bytes.
func cleanText(s string, max int) string {
	clean := len(s) <= max
	for i := 0; clean && i < len(s); i++ {
		if c := s[i]; c == 0 || c >= utf8.RuneSelf {
			clean = false
		}
	}
	if clean { // the common case: short ASCII
		return s
	}
	if !utf8.ValidString(s) {
		s = strings.ToValidUTF8(s, "\uFFFD")
	}
	if strings.IndexByte(s, 0) >= 0 {
		s = strings.ReplaceAll(s, "\x00", "")
	}
	if len(s) > max {
		cut := max
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		s = s[:cut]
	}
	return s
}

func clampInt32(v int64) int64 {
	return min(max(v, 0), math.MaxInt32)
}
