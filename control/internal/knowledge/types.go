package knowledge

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"math/big"
	"time"

	"github.com/maas-platform/maas/pkg/apierr"
	"github.com/maas-platform/maas/pkg/textcheck"
)

// File statuses (OpenAI's).
const (
	StatusInProgress = "in_progress"
	StatusCompleted  = "completed"
	StatusCancelled  = "cancelled"
	StatusFailed     = "failed"
)

// last_error codes of a failed file (OpenAI's).
const (
	CodeServerError     = "server_error"
	CodeUnsupportedFile = "unsupported_file"
	CodeInvalidFile     = "invalid_file"
)

// Chunking bounds and defaults (OpenAI's static strategy).
const (
	MinChunkTokens     = 100
	MaxChunkTokens     = 4096
	DefaultChunkTokens = 800
	DefaultOverlap     = 400
)

// Limits of metadata and attributes (OpenAI's).
const (
	maxPairs     = 16
	maxKeyLen    = 64
	maxValueLen  = 512
	maxNameLen   = 256
	maxFileIDs   = 500
	maxQueryLen  = 4096
	maxSearchRes = 50
)

// FileCounts are a store's or a batch's files by status.
type FileCounts struct {
	InProgress int64 `json:"in_progress"`
	Completed  int64 `json:"completed"`
	Failed     int64 `json:"failed"`
	Cancelled  int64 `json:"cancelled"`
	Total      int64 `json:"total"`
}

func (c *FileCounts) add(status string, n int64) {
	switch status {
	case StatusInProgress:
		c.InProgress += n
	case StatusCompleted:
		c.Completed += n
	case StatusFailed:
		c.Failed += n
	case StatusCancelled:
		c.Cancelled += n
	}
	c.Total += n
}

// ExpiresAfter is a store's expiration policy.
type ExpiresAfter struct {
	Anchor string `json:"anchor"`
	Days   int    `json:"days"`
}

// VectorStore is OpenAI's vector store object, plus the embedding model it was built with.
type VectorStore struct {
	ID             string            `json:"id"`
	Object         string            `json:"object"`
	CreatedAt      int64             `json:"created_at"`
	Name           string            `json:"name"`
	UsageBytes     int64             `json:"usage_bytes"`
	FileCounts     FileCounts        `json:"file_counts"`
	Status         string            `json:"status"`
	ExpiresAfter   *ExpiresAfter     `json:"expires_after"`
	ExpiresAt      *int64            `json:"expires_at"`
	LastActiveAt   int64             `json:"last_active_at"`
	Metadata       map[string]string `json:"metadata"`
	EmbeddingModel string            `json:"embedding_model"`

	seq    int64
	UserID int64 `json:"-"`
}

// LastError is why a file failed.
type LastError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// StaticChunking is the static strategy's parameters.
type StaticChunking struct {
	MaxChunkSizeTokens int `json:"max_chunk_size_tokens"`
	ChunkOverlapTokens int `json:"chunk_overlap_tokens"`
}

// ChunkingStrategy is how a file is chunked (always reported as static).
type ChunkingStrategy struct {
	Type   string          `json:"type"`
	Static *StaticChunking `json:"static,omitempty"`
}

// StoreFile is OpenAI's vector store file object.
type StoreFile struct {
	ID               string           `json:"id"`
	Object           string           `json:"object"`
	UsageBytes       int64            `json:"usage_bytes"`
	CreatedAt        int64            `json:"created_at"`
	VectorStoreID    string           `json:"vector_store_id"`
	Status           string           `json:"status"`
	LastError        *LastError       `json:"last_error"`
	ChunkingStrategy ChunkingStrategy `json:"chunking_strategy"`
	Attributes       map[string]any   `json:"attributes"`

	seq        int64
	filename   string
	generation int
}

// Batch is OpenAI's vector store file batch object.
type Batch struct {
	ID            string     `json:"id"`
	Object        string     `json:"object"`
	CreatedAt     int64      `json:"created_at"`
	VectorStoreID string     `json:"vector_store_id"`
	Status        string     `json:"status"`
	FileCounts    FileCounts `json:"file_counts"`
}

// chunkingRequest is the chunking_strategy of a request.
type chunkingRequest struct {
	Type   string `json:"type"`
	Static *struct {
		MaxChunkSizeTokens *int `json:"max_chunk_size_tokens"`
		ChunkOverlapTokens *int `json:"chunk_overlap_tokens"`
	} `json:"static"`
}

// resolve returns the static parameters of r (nil r: auto).
func (r *chunkingRequest) resolve(param string) (StaticChunking, error) {
	auto := StaticChunking{DefaultChunkTokens, DefaultOverlap}
	if r == nil {
		return auto, nil
	}
	switch r.Type {
	case "auto":
		if r.Static != nil {
			return auto, apierr.Param(param+".static", "static parameters are only allowed with type \"static\"")
		}
		return auto, nil
	case "static":
	default:
		return auto, apierr.Param(param+".type", "chunking_strategy.type must be \"auto\" or \"static\"")
	}
	if r.Static == nil || r.Static.MaxChunkSizeTokens == nil {
		return auto, apierr.Param(param+".static.max_chunk_size_tokens", "max_chunk_size_tokens is required with a static chunking strategy")
	}
	s := StaticChunking{MaxChunkSizeTokens: *r.Static.MaxChunkSizeTokens}
	if s.MaxChunkSizeTokens < MinChunkTokens || s.MaxChunkSizeTokens > MaxChunkTokens {
		return auto, apierr.Param(param+".static.max_chunk_size_tokens", "max_chunk_size_tokens must be from %d to %d", MinChunkTokens, MaxChunkTokens)
	}
	if r.Static.ChunkOverlapTokens == nil {
		s.ChunkOverlapTokens = min(DefaultOverlap, s.MaxChunkSizeTokens/2)
	} else {
		s.ChunkOverlapTokens = *r.Static.ChunkOverlapTokens
	}
	if s.ChunkOverlapTokens < 0 || s.ChunkOverlapTokens > s.MaxChunkSizeTokens/2 {
		return auto, apierr.Param(param+".static.chunk_overlap_tokens", "chunk_overlap_tokens must be from 0 to half of max_chunk_size_tokens (%d)", s.MaxChunkSizeTokens/2)
	}
	return s, nil
}

func staticStrategy(s StaticChunking) ChunkingStrategy {
	return ChunkingStrategy{Type: "static", Static: &s}
}

// validateMetadata checks OpenAI's metadata limits.
func validateMetadata(m map[string]string) error {
	if len(m) > maxPairs {
		return apierr.Param("metadata", "metadata may have at most %d keys", maxPairs)
	}
	for k, v := range m {
		if k == "" || len(k) > maxKeyLen {
			return apierr.Param("metadata", "metadata keys must be 1 to %d characters", maxKeyLen)
		}
		if len(v) > maxValueLen {
			return apierr.Param("metadata", "metadata values must be at most %d characters (key %q)", maxValueLen, k)
		}
		if !textcheck.Valid(k) || !textcheck.Valid(v) {
			return apierr.Param("metadata", "metadata keys and values must be valid UTF-8 without NUL characters")
		}
	}
	return nil
}

// parseAttributes decodes and checks file attributes: at most 16 keys of at most 64
// characters; values strings of at most 512 characters, numbers or booleans.
func parseAttributes(raw json.RawMessage, param string) (map[string]any, error) {
	out := map[string]any{}
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return out, nil
	}
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, apierr.Param(param, "attributes must be an object")
	}
	if len(m) > maxPairs {
		return nil, apierr.Param(param, "attributes may have at most %d keys", maxPairs)
	}
	for k, v := range m {
		if k == "" || len(k) > maxKeyLen {
			return nil, apierr.Param(param, "attribute keys must be 1 to %d characters", maxKeyLen)
		}
		if !textcheck.Valid(k) {
			return nil, apierr.Param(param, "attribute keys must be valid UTF-8 without NUL characters")
		}
		switch x := v.(type) {
		case string:
			if len(x) > maxValueLen {
				return nil, apierr.Param(param, "attribute %q is longer than %d characters", k, maxValueLen)
			}
			if !textcheck.Valid(x) {
				return nil, apierr.Param(param, "attribute %q must be valid UTF-8 without NUL characters", k)
			}
		case float64, bool:
		default:
			return nil, apierr.Param(param, "attribute %q must be a string, a number or a boolean", k)
		}
		out[k] = v
	}
	return out, nil
}

func validName(s string) bool { return len(s) <= maxNameLen && textcheck.Valid(s) }

// validCursor reports whether after may name a listed object: text PostgreSQL accepts
// (anything else names none, and would fail the lookup).
func validCursor(after string) bool { return len(after) <= 256 && textcheck.Valid(after) }

const idAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"

func newID(prefix string) string {
	b := make([]byte, 24)
	n := big.NewInt(int64(len(idAlphabet)))
	for i := range b {
		x, err := rand.Int(rand.Reader, n)
		if err != nil {
			panic(err) // crypto/rand never fails on supported platforms
		}
		b[i] = idAlphabet[x.Int64()]
	}
	return prefix + string(b)
}

func unix(t time.Time) int64 { return t.Unix() }

func notFound(what, id, param string) error {
	return &apierr.Error{Kind: apierr.NotFound, Param: param, Message: fmt.Sprintf("%s %s not found", what, id)}
}
