package reqbody

import (
	"strconv"
)

// Rewrite is what the gateway changes in a body before it goes to an engine.
type Rewrite struct {
	// IncludeUsage sets stream_options.include_usage to true, so that the engine reports a
	// stream's usage in its last chunk.
	IncludeUsage bool
	// MaxTokens, when > 0, sets max_tokens: the output cap the reservation counted on, for a
	// body that gives no output limit.
	MaxTokens int64
}

// Rewrites returns what must change in the body f was read from: include_usage for a
// stream that does not ask for it, and max_tokens = outputCap for a chat or completions
// request with neither max_tokens nor max_completion_tokens (absent or null) when
// outputCap > 0, so that the engine cannot produce more than Reservation counted.
func (f *Fields) Rewrites(outputCap int64) Rewrite {
	var r Rewrite
	r.IncludeUsage = f.Stream && !f.IncludeUsage
	if f.ep != Embeddings && f.MaxTokens < 0 && f.MaxCompletionTokens < 0 && outputCap > 0 {
		r.MaxTokens = outputCap
	}
	return r
}

// edit replaces body[at:end] (an insertion when end == at) with what kind says.
type edit struct {
	at, end int
	kind    uint8
}

const (
	addStreamOptions = iota // "stream_options":{"include_usage":true},
	setStreamOptions        // {"include_usage":true}
	setTrue                 // true
	addIncludeUsage         // "include_usage":true,
	addMaxTokens            // "max_tokens":N,
	setMaxTokens            // N
)

// AppendRewrite appends to dst the body f was parsed from with the changes of r, and
// returns the extended slice. Only the bytes that must change are changed: a member's
// value when the member is there (however its key was written), else the member is added
// at the start of its object; stream_options: null or {} becomes {"include_usage":true}.
// body must be the bytes a successful Parse returned f for.
func (f *Fields) AppendRewrite(dst, body []byte, r Rewrite) []byte {
	var edits [2]edit
	n := 0
	if r.IncludeUsage {
		switch {
		case f.so < 0:
			edits[n] = edit{f.open + 1, f.open + 1, addStreamOptions}
		case f.soNull || f.soZero:
			edits[n] = edit{f.so, f.soEnd, setStreamOptions}
		case f.iu >= 0:
			edits[n] = edit{f.iu, f.iuEnd, setTrue}
		default:
			edits[n] = edit{f.so + 1, f.so + 1, addIncludeUsage}
		}
		n++
	}
	if r.MaxTokens > 0 {
		if f.mt >= 0 {
			edits[n] = edit{f.mt, f.mtEnd, setMaxTokens}
		} else {
			edits[n] = edit{f.open + 1, f.open + 1, addMaxTokens}
		}
		n++
	}
	if n == 2 && edits[1].at < edits[0].at {
		edits[0], edits[1] = edits[1], edits[0]
	}
	last := 0
	for _, e := range edits[:n] {
		dst = append(dst, body[last:e.at]...)
		switch e.kind {
		case addStreamOptions:
			dst = append(dst, `"stream_options":{"include_usage":true},`...)
		case setStreamOptions:
			dst = append(dst, `{"include_usage":true}`...)
		case setTrue:
			dst = append(dst, "true"...)
		case addIncludeUsage:
			dst = append(dst, `"include_usage":true,`...)
		case addMaxTokens:
			dst = append(dst, `"max_tokens":`...)
			dst = strconv.AppendInt(dst, r.MaxTokens, 10)
			dst = append(dst, ',')
		case setMaxTokens:
			dst = strconv.AppendInt(dst, r.MaxTokens, 10)
		}
		last = e.end
	}
	return append(dst, body[last:]...)
}

// AppendIncludeUsage is AppendRewrite with include_usage alone.
func (f *Fields) AppendIncludeUsage(dst, body []byte) []byte {
	return f.AppendRewrite(dst, body, Rewrite{IncludeUsage: true})
}
