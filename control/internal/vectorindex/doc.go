// Package vectorindex is the knowledge domain's vector index behind one interface: chunks
// (a vector with its store, file and chunk ids and the file's attributes) are upserted,
// deleted by file or by store, and searched within one store by cosine similarity with an
// attribute filter in OpenAI's vector-store filter grammar.
//
// Contract every implementation keeps (indextest.Run checks it):
//   - a search never returns a chunk of another store;
//   - the filter is applied before top-k: k results are returned whenever k chunks of the
//     store match the filter, however far the nearest chunks are from matching;
//   - scores are cosine similarities (1 for the same direction), results best first, ties
//     broken by chunk id;
//   - an upsert of an existing (store, chunk id) replaces it; deletes are idempotent;
//   - every chunk of a store has the vector length of the store's first chunk
//     (ErrDimensions otherwise), and a query must have that length too.
//
// Filters (Filter): a comparison {"type": eq|ne|gt|gte|lt|lte|in|nin, "key", "value"} or a
// compound {"type": and|or, "filters": [...]}, nested to MaxFilterDepth. A comparison on an
// attribute the chunk does not have is false (ne and nin included), as is a comparison of
// values of different types; strings order bytewise, numbers numerically, booleans support
// only eq, ne, in and nin.
//
// Implementations: embedded (vectors persisted in PostgreSQL, searched exactly in process;
// the default) and Milvus (when MAAS_MILVUS_ADDR is set).
package vectorindex
