// Package knowledge is the knowledge-base domain: OpenAI's vector stores API
// (/v1/vector_stores: stores, their files, file batches and search), the ingestion of
// attached files in River jobs, and hybrid retrieval. It owns the vector_store* tables; the
// vectors live in a vectorindex.Index (the embedded index or Milvus).
//
// Ingestion of one attached file (a River job, retried with backoff):
//
//	read the file (Files API) → extract text (txt, md, html, pdf) → chunk by tokens with
//	overlap → embed in batches through the gateway's /v1/embeddings as the store's owner →
//	replace the file's vectors in the index → in one transaction: replace the file's chunk
//	text (with its tsvector) and mark the file completed
//
// Every step is idempotent: a retried job first removes the file's vectors, chunk ids are
// derived from the file and the chunk's position, and the final transaction checks that the
// attachment is still the one the job was started for (the file's generation), so a job
// whose file was detached, cancelled or attached again meanwhile changes nothing and removes
// the vectors it wrote. A file that cannot be ingested is failed with last_error
// {code, message}: unsupported_file (a type we cannot read), invalid_file (a corrupt pdf,
// text that is not UTF-8, no text at all), server_error (the file is gone, the embeddings
// kept failing). Detaching a file or deleting a store removes its chunks at once and its
// vectors at once and again in a River job (the job survives a crash in between).
//
// Chunking follows OpenAI's static strategy: chunks of at most max_chunk_size_tokens (100
// to 4096, default 800) overlapping by chunk_overlap_tokens (at most half, default 400),
// cut at whitespace, counted with the platform's token estimate (file.EstimateTokens: one
// token per 4 bytes, rounded up, the gateway's pre-count).
//
// Search embeds the query (as the caller), takes candidates from the index (cosine) and
// from PostgreSQL's full-text search (ts_rank over to_tsvector('english')), both with the
// attribute filter applied before their top-k, and fuses the two rankings by reciprocal
// rank fusion, weighted by ranking_options.hybrid_search {embedding_weight, text_weight}
// (1 and 1 by default): score = Σ w / (60 + rank), divided by its maximum Σ w / 61 so that
// a chunk ranked first by both lists scores 1. With text_weight 0 the score is the cosine
// similarity itself. score_threshold drops results below it.
//
// Visibility: a store, its files and its search are seen by its owner and by admins;
// anyone else gets 404, as for a store that does not exist.
package knowledge
