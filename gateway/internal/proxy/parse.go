package proxy

import (
	"bytes"
	"encoding/json"

	"github.com/maas-platform/maas/gateway/internal/snapshot"
	"github.com/maas-platform/maas/gateway/internal/upstream"
	"github.com/maas-platform/maas/pkg/apierr"
)

// requestFields is everything the gateway reads of a request body and acts on. The body
// itself goes upstream as it is (rewrite.go may edit it); nothing else reads it.
type requestFields struct {
	// model is the model name as sent (aliases unresolved); it may alias the body.
	model []byte
	// stream: a streamed answer was asked for (never for embeddings).
	stream bool
	// includeUsage: stream_options.include_usage is true.
	includeUsage bool
	// streamOptions is the byte range of the stream_options value in the body; -1, -1
	// when absent (rewrite.go edits it in place).
	soStart, soEnd int
	// maxTokens is max_tokens or max_completion_tokens (the last one present); 0 when absent.
	maxTokens int64
	// promptBytes is the size of the prompt fields (messages, prompt, input).
	promptBytes int
	// affinity hashes the first 512 bytes of the first prompt field (prefix-affinity routing).
	affinity uint64
}

// readRequest reads the fields of body that the gateway acts on, validating body as JSON
// in the same pass. Errors are *apierr.Error values for the client (400).
func readRequest(body []byte, ep endpoint) (requestFields, error) {
	f := requestFields{soStart: -1, soEnd: -1}
	if len(bytes.TrimSpace(body)) == 0 {
		return f, apierr.New(apierr.InvalidRequest, "request body is empty; send a JSON object")
	}
	var modelRaw, streamRaw []byte
	var perr error
	valid, isObj := scanObject(body, func(key []byte, s, e int) {
		if perr != nil {
			return
		}
		v := body[s:e]
		switch string(key) {
		case "model":
			modelRaw = v
		case "stream":
			streamRaw = v
		case "stream_options":
			f.soStart, f.soEnd = s, e
		case "max_tokens", "max_completion_tokens":
			if string(v) == "null" {
				break
			}
			n, ok := intValue(v)
			if !ok || n < 0 {
				perr = apierr.Param(string(key), "%s must be a non-negative integer", key)
				return
			}
			f.maxTokens = n
		case "messages", "prompt", "input":
			f.promptBytes += e - s
			if f.affinity == 0 {
				f.affinity = upstream.AffinityKey(v[:min(len(v), 512)])
			}
		}
	})
	if !valid {
		var v any
		msg := "request body is not valid JSON"
		if err := json.Unmarshal(body, &v); err != nil {
			msg += ": " + err.Error()
		}
		return f, apierr.New(apierr.InvalidRequest, "%s", msg)
	}
	if !isObj {
		return f, apierr.New(apierr.InvalidRequest, "request body must be a JSON object")
	}
	if perr != nil {
		return f, perr
	}
	if modelRaw == nil || string(modelRaw) == "null" {
		return f, apierr.Param("model", "you must provide a model parameter")
	}
	name, ok := stringValue(modelRaw)
	if !ok {
		var s string
		if err := json.Unmarshal(modelRaw, &s); err != nil {
			return f, apierr.Param("model", "model must be a string")
		}
		name = []byte(s)
	}
	if len(name) == 0 {
		return f, apierr.Param("model", "you must provide a model parameter")
	}
	f.model = name
	switch string(streamRaw) {
	case "", "null", "false":
	case "true":
		f.stream = ep != epEmbeddings
	default:
		return f, apierr.Param("stream", "stream must be a boolean")
	}
	if f.soStart >= 0 {
		f.includeUsage = includesUsage(body[f.soStart:f.soEnd])
	}
	return f, nil
}

func includesUsage(so []byte) bool {
	if len(so) == 0 || so[0] != '{' {
		return false
	}
	return string(member(so, "include_usage")) == "true"
}

// promptEstimate is a rough token count of the prompt (about 4 bytes per token).
func (f *requestFields) promptEstimate() int64 { return int64(f.promptBytes+3) / 4 }

// reservation is the tokens a request may use, reserved at admission: the prompt estimate
// plus the output bound (max_tokens, else the model's output cap).
func (f *requestFields) reservation(ep endpoint, m *snapshot.Model) int64 {
	out := f.maxTokens
	if out == 0 && ep != epEmbeddings {
		out = int64(m.MaxOutputTokens)
	}
	return f.promptEstimate() + out
}
