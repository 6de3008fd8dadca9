package proxy

import (
	"github.com/maas-platform/maas/gateway/internal/reqbody"
)

// requestFields is everything the gateway reads of a request body and acts on, read once
// by reqbody.Parse with an engine's semantics (decoded keys, duplicates refused, UTF-8
// checked): the model as sent (aliases unresolved; it may alias the body), stream, the
// reservation and the include_usage/max_tokens rewrites. The body itself goes upstream as
// it is (rewrite.go may edit it); nothing else reads it.
type requestFields struct {
	reqbody.Fields
	// affinity hashes the first 512 bytes of the prompt field, for a model routed by
	// prefix affinity (set by authorize; 0 otherwise).
	affinity uint64
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
	return requestFields{Fields: r}, nil
}
