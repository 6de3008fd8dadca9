package proxy

import (
	"github.com/maas-platform/maas/gateway/internal/reqbody"
	"github.com/maas-platform/maas/gateway/internal/snapshot"
	"github.com/maas-platform/maas/gateway/internal/upstream"
)

// requestFields is everything the gateway reads of a request body and acts on, read once
// by reqbody.Parse with an engine's semantics (decoded keys, duplicates refused, UTF-8
// checked). The body itself goes upstream as it is (rewrite.go may edit it); nothing else
// reads it.
type requestFields struct {
	// model is the model name as sent (decoded; aliases unresolved); it may alias the body.
	model []byte
	// stream: a streamed answer was asked for (never for embeddings).
	stream bool
	// affinity hashes the first 512 bytes of the prompt field (prefix-affinity routing).
	affinity uint64
	// read is the whole reading: reservation, include_usage rewrite.
	read reqbody.Fields
}

var reqEndpoints = [...]reqbody.Endpoint{
	epChat:        reqbody.Chat,
	epCompletions: reqbody.Completions,
	epEmbeddings:  reqbody.Embeddings,
}

// readRequest reads the fields of body that the gateway acts on, validating body as JSON
// in the same pass. Errors are *apierr.Error values for the client (400).
func readRequest(body []byte, ep endpoint, lim reqbody.Limits) (requestFields, error) {
	r, err := reqbody.Parse(body, reqEndpoints[ep], lim)
	if err != nil {
		return requestFields{}, err
	}
	f := requestFields{model: r.Model, stream: r.Stream, read: r}
	if len(r.Prefix) > 0 {
		f.affinity = upstream.AffinityKey(r.Prefix)
	}
	return f, nil
}

// promptEstimate is a rough token count of the prompt (about 4 bytes per token).
func (f *requestFields) promptEstimate() int64 { return f.read.PromptEstimate() }

// reservation is the tokens a request may use, reserved at admission:
// n × (the larger of max_tokens and max_completion_tokens, else the model's output cap)
// plus the prompt estimate; the prompt estimate alone for embeddings.
func (f *requestFields) reservation(_ endpoint, m *snapshot.Model) int64 {
	return f.read.Reservation(int64(m.MaxOutputTokens))
}
