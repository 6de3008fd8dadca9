package vectorindex

import (
	"context"
	"errors"
)

// Errors every implementation returns for the same conditions (wrapped).
var (
	// ErrDimensions reports a vector whose length differs from the store's.
	ErrDimensions = errors.New("vectorindex: vector length differs from the store's")
	// ErrInvalid reports a malformed chunk or query (empty id, empty vector, k < 1).
	ErrInvalid = errors.New("vectorindex: invalid argument")
	// ErrUnavailable reports an index that cannot answer now but may later (a remote index
	// not connected yet): a 503 for a search, a retry for an ingestion.
	ErrUnavailable = errors.New("vectorindex: index unavailable")
)

// MaxK bounds Query.K.
const MaxK = 1000

// Chunk is one indexed piece of a file.
type Chunk struct {
	StoreID string
	FileID  string
	ChunkID string // unique within the store
	Vector  []float32
	// Attributes are the file's attributes (string, float64 or bool values), matched by
	// filters.
	Attributes map[string]any
}

// Query is one search within one store.
type Query struct {
	StoreID string
	Vector  []float32
	K       int     // 1..MaxK
	Filter  *Filter // nil: every chunk of the store
}

// Hit is one search result.
type Hit struct {
	FileID  string
	ChunkID string
	Score   float32 // cosine similarity
}

// Index stores and searches chunk vectors. Implementations are safe for concurrent use.
type Index interface {
	// Upsert inserts or replaces chunks (any stores, any files).
	Upsert(ctx context.Context, chunks []Chunk) error
	// SetAttributes replaces the attributes of every chunk of a file.
	SetAttributes(ctx context.Context, storeID, fileID string, attrs map[string]any) error
	// DeleteFile removes every chunk of a file from a store.
	DeleteFile(ctx context.Context, storeID, fileID string) error
	// DeleteStore removes every chunk of a store.
	DeleteStore(ctx context.Context, storeID string) error
	// Search returns up to q.K chunks of q.StoreID that match q.Filter, most similar first.
	Search(ctx context.Context, q Query) ([]Hit, error)
}

// ValidateChunks checks what every implementation requires of an Upsert: ids set, vectors
// non-empty and of one length per store within the batch.
func ValidateChunks(chunks []Chunk) error {
	dims := map[string]int{}
	for i := range chunks {
		c := &chunks[i]
		if c.StoreID == "" || c.FileID == "" || c.ChunkID == "" || len(c.Vector) == 0 {
			return ErrInvalid
		}
		if d, ok := dims[c.StoreID]; ok && d != len(c.Vector) {
			return ErrDimensions
		}
		dims[c.StoreID] = len(c.Vector)
		if err := ValidateAttributes(c.Attributes); err != nil {
			return err
		}
	}
	return nil
}

// ValidateAttributes checks that every attribute value is a string, a float64 or a bool.
func ValidateAttributes(attrs map[string]any) error {
	for _, v := range attrs {
		switch v.(type) {
		case string, float64, bool:
		default:
			return ErrInvalid
		}
	}
	return nil
}

// ValidateQuery checks what every implementation requires of a Search.
func ValidateQuery(q Query) error {
	if q.StoreID == "" || len(q.Vector) == 0 || q.K < 1 || q.K > MaxK {
		return ErrInvalid
	}
	return nil
}
