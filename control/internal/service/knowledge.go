package service

import (
	"context"
	"errors"
	"io"
	"log/slog"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/maas-platform/maas/control/internal/file"
	"github.com/maas-platform/maas/control/internal/jobs"
	"github.com/maas-platform/maas/control/internal/knowledge"
	"github.com/maas-platform/maas/control/internal/vectorindex"
	"github.com/maas-platform/maas/control/internal/vectorindex/embedded"
	"github.com/maas-platform/maas/pkg/config"
)

// KnowledgeOptions configure the vector stores API (/v1/vector_stores) and ingestion.
type KnowledgeOptions struct {
	// EmbeddingModel is the embedding model of stores created without one
	// (MAAS_KNOWLEDGE_EMBEDDING_MODEL).
	EmbeddingModel string
	// GatewayURL is where ingestion and search embed, through the gateway
	// (MAAS_GATEWAY_URL).
	GatewayURL string
	// EmbedBatch is how many chunks one embeddings request carries
	// (MAAS_KNOWLEDGE_EMBED_BATCH).
	EmbedBatch int
	// IndexCacheBytes bounds the vectors the embedded index keeps in memory
	// (MAAS_KNOWLEDGE_INDEX_CACHE_BYTES).
	IndexCacheBytes int
	// MaxFileBytes bounds the content read from one attached file
	// (MAAS_KNOWLEDGE_MAX_FILE_BYTES).
	MaxFileBytes int

	// Index is the vector index: Run sets it from MAAS_MILVUS_* (newVectorIndex) unless a
	// test did; nil means the embedded index.
	Index vectorindex.Index
	// Embedder replaces the gateway (tests only).
	Embedder knowledge.Embedder
}

func bindKnowledge(l *config.Loader, o *KnowledgeOptions) {
	l.String(&o.EmbeddingModel, "MAAS_KNOWLEDGE_EMBEDDING_MODEL", "knowledge-embedding-model", "sim-embedding", "embedding model of vector stores created without one")
	l.String(&o.GatewayURL, "MAAS_GATEWAY_URL", "gateway-url", "http://127.0.0.1:8000", "gateway base URL, through which vector stores embed (as their owner, signed with the internal token)")
	l.Int(&o.EmbedBatch, "MAAS_KNOWLEDGE_EMBED_BATCH", "knowledge-embed-batch", 64, "chunks per embeddings request when ingesting a file")
	l.Int(&o.IndexCacheBytes, "MAAS_KNOWLEDGE_INDEX_CACHE_BYTES", "knowledge-index-cache-bytes", 512<<20, "memory the embedded vector index may keep loaded, in bytes")
	l.Int(&o.MaxFileBytes, "MAAS_KNOWLEDGE_MAX_FILE_BYTES", "knowledge-max-file-bytes", 64<<20, "largest file content a vector store reads, in bytes")
}

func (o KnowledgeOptions) validate() error {
	switch {
	case o.EmbeddingModel == "":
		return &config.Error{Name: "MAAS_KNOWLEDGE_EMBEDDING_MODEL", Msg: "is empty"}
	case o.GatewayURL == "":
		return &config.Error{Name: "MAAS_GATEWAY_URL", Msg: "is empty"}
	case o.EmbedBatch < 1 || o.EmbedBatch > 2048:
		return &config.Error{Name: "MAAS_KNOWLEDGE_EMBED_BATCH", Msg: "must be from 1 to 2048"}
	case o.IndexCacheBytes < 1:
		return &config.Error{Name: "MAAS_KNOWLEDGE_INDEX_CACHE_BYTES", Msg: "must be a positive number of bytes"}
	case o.MaxFileBytes < 1:
		return &config.Error{Name: "MAAS_KNOWLEDGE_MAX_FILE_BYTES", Msg: "must be a positive number of bytes"}
	}
	return nil
}

// newKnowledge builds the knowledge domain on the Files API, the embedded vector index and
// the queue, with its workers added to the queue.
func newKnowledge(pool *pgxpool.Pool, o Options, log *slog.Logger, files *file.Service, q *jobs.Queue) (*knowledge.Service, error) {
	ko := o.Knowledge
	emb := ko.Embedder
	if emb == nil {
		emb = &knowledge.GatewayEmbedder{URL: ko.GatewayURL, Token: o.InternalToken}
	}
	idx := ko.Index
	if idx == nil {
		idx = embedded.New(pool, embedded.Options{Logger: log, CacheBytes: int64(ko.IndexCacheBytes)})
	}
	k, err := knowledge.New(pool, knowledgeFiles{files}, emb, idx, q, knowledge.Options{
		Logger: log, EmbeddingModel: ko.EmbeddingModel, EmbedBatch: ko.EmbedBatch, MaxFileBytes: int64(ko.MaxFileBytes),
	})
	if err != nil {
		return nil, err
	}
	k.AddWorkers(q.Workers())
	return k, nil
}

// knowledgeFiles is the Files API as the knowledge domain consumes it.
type knowledgeFiles struct{ s *file.Service }

func (a knowledgeFiles) Get(ctx context.Context, id string) (knowledge.File, error) {
	f, err := a.s.Get(ctx, id, 0, true)
	if errors.Is(err, file.ErrNotFound) {
		return knowledge.File{}, knowledge.ErrFileNotFound
	}
	if err != nil {
		return knowledge.File{}, err
	}
	return knowledge.File{ID: f.ID, UserID: f.UserID, Filename: f.Filename, Bytes: f.Bytes}, nil
}

func (a knowledgeFiles) Open(ctx context.Context, id string) (io.ReadCloser, error) {
	f, err := a.s.Get(ctx, id, 0, true)
	if errors.Is(err, file.ErrNotFound) {
		return nil, knowledge.ErrFileNotFound
	}
	if err != nil {
		return nil, err
	}
	rc, _, err := a.s.Open(ctx, f)
	return rc, err
}
