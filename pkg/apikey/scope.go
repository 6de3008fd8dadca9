package apikey

import (
	"fmt"
	"strings"
)

// Scopes is the set of endpoint families a key may call. The gateway and control read the
// same rule from here: ScopeFor says which scope a path needs, and a key without it is
// refused (403) at both ends. The zero value allows nothing.
type Scopes uint8

// The scopes a key can carry.
const (
	// Inference is the OpenAI API: /v1/chat/completions, /v1/completions, /v1/embeddings,
	// /v1/models and the OpenAI-shaped endpoints forwarded to control (/v1/files, …).
	Inference Scopes = 1 << iota
	// Management is the console API, /api/v1/*: with it a key acts as its owner's console
	// session (its owner's roles still apply). Only an admin may grant it.
	Management
)

// DefaultScopes are the scopes of a key created without a scopes field.
const DefaultScopes = Inference

// AllScopes is every scope.
const AllScopes = Inference | Management

var scopeNames = [...]struct {
	s    Scopes
	name string
}{{Inference, "inference"}, {Management, "management"}}

// Has reports whether s includes every scope of want.
func (s Scopes) Has(want Scopes) bool { return s&want == want }

// Within reports whether s is a subset of other.
func (s Scopes) Within(other Scopes) bool { return s&^other == 0 }

// Names returns the scopes' names in a fixed order (never nil).
func (s Scopes) Names() []string {
	out := []string{}
	for _, n := range scopeNames {
		if s.Has(n.s) {
			out = append(out, n.name)
		}
	}
	return out
}

// String is the scopes' names joined by commas.
func (s Scopes) String() string { return strings.Join(s.Names(), ",") }

// ParseScopes reads scope names. An empty list, an unknown name or a repeated one is an
// error whose message can be shown to a client.
func ParseScopes(names []string) (Scopes, error) {
	if len(names) == 0 {
		return 0, fmt.Errorf("scopes must name at least one scope (inference, management)")
	}
	var s Scopes
	for _, name := range names {
		found := false
		for _, n := range scopeNames {
			if n.name == name {
				if s.Has(n.s) {
					return 0, fmt.Errorf("scope %q is listed twice", name)
				}
				s |= n.s
				found = true
			}
		}
		if !found {
			return 0, fmt.Errorf("unknown scope %q (use inference or management)", name)
		}
	}
	return s, nil
}

// ScopesOf reads stored scope names leniently (unknown names are ignored): for rows the
// database already validated.
func ScopesOf(names []string) Scopes {
	var s Scopes
	for _, name := range names {
		for _, n := range scopeNames {
			if n.name == name {
				s |= n.s
			}
		}
	}
	return s
}

// ScopeFor returns the scope a request to path needs: Management for the console API
// (/api/…), Inference for everything else a key can reach (the OpenAI API under /v1/…).
func ScopeFor(path string) Scopes {
	if path == "/api" || strings.HasPrefix(path, "/api/") {
		return Management
	}
	return Inference
}

// ScopeError is the message of a 403 for a key that lacks need.
func ScopeError(need Scopes) string {
	if need == Management {
		return "this API key lacks the management scope needed for the console API (/api/v1); " +
			"use a console session, or a key an admin created with scopes [\"management\"]"
	}
	return "this API key lacks the " + need.String() + " scope needed for this endpoint"
}
