// Package apikey generates, parses and hashes the platform's API keys.
//
// A key is "sk-" followed by 43 base62 characters that encode 32 random bytes (256 bits).
// Only its SHA-256 is stored, with a short visible prefix for listings. A key carries
// Scopes (scope.go): which endpoint families it may call, checked by the gateway and by
// control with the same rule.
package apikey

import (
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"math/big"
	"strings"
)

// Prefix starts every key.
const Prefix = "sk-"

const (
	alphabet    = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
	randomBytes = 32
	bodyLen     = 43 // ceil(256 / log2(62))
	// VisiblePrefixLen is how many characters of a key listings show ("sk-" + 8).
	VisiblePrefixLen = len(Prefix) + 8
)

// Hash is a key's stored digest.
type Hash [sha256.Size]byte

// ErrMalformed reports a string that cannot be a key.
var ErrMalformed = errors.New("apikey: malformed key")

// Generate returns a new random key.
func Generate() (string, error) {
	var b [randomBytes]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	n := new(big.Int).SetBytes(b[:])
	base := big.NewInt(62)
	mod := new(big.Int)
	out := make([]byte, bodyLen)
	for i := bodyLen - 1; i >= 0; i-- {
		n.DivMod(n, base, mod)
		out[i] = alphabet[mod.Int64()]
	}
	return Prefix + string(out), nil
}

// Valid reports whether s has a key's shape.
func Valid(s string) bool {
	if !strings.HasPrefix(s, Prefix) || len(s) != len(Prefix)+bodyLen {
		return false
	}
	for i := len(Prefix); i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z') {
			return false
		}
	}
	return true
}

// Sum returns the digest of key (any bytes; callers check Valid first when they care).
func Sum(key []byte) Hash { return sha256.Sum256(key) }

// Visible returns the prefix of key shown in listings.
func Visible(key string) string {
	if len(key) < VisiblePrefixLen {
		return key
	}
	return key[:VisiblePrefixLen]
}
