// Package milvus is the vectorindex.Index on Milvus, through the maintained Go client
// (github.com/milvus-io/milvus/client/v2), for deployments whose vectors outgrow one
// control process. Control selects it when MAAS_MILVUS_ADDR is set.
//
// Layout. One collection per vector length, <prefix>_<dims> (maas_chunks_384), created on
// the first upsert of that length with: pk (VarChar primary key, the store id's length, the
// store id and the chunk id, so no separator can be forged), store_id (VarChar, the
// partition key: a store's chunks share a partition and a search names its store, so Milvus
// searches that partition only), file_id, chunk_id, attrs (JSON) and vector (FloatVector),
// an AUTOINDEX with the COSINE metric, consistency Strong. A store lives in the collection of
// its vectors' length; an upsert or a query of another length is ErrDimensions (checked
// against the other collections, which are few).
//
// Filters. OpenAI's attribute filter becomes a Milvus boolean expression, applied by Milvus
// before it ranks (filtered search), so k results come back whenever k chunks match.
// Attributes are stored under typed hexadecimal names (s_, n_, b_ and the key in hex): no
// user key is ever written into an expression, and a comparison with a value of another
// type reads a name the chunk does not have, so it is false by construction; ne and nin
// are guarded by "exists" so a missing attribute is false whatever Milvus does with !=.
// String values are written as Go-quoted literals, which Milvus's lexer accepts and its
// X
// evaluator reads them back as Milvus does).
//
// Reads and writes. Upsert replaces by primary key (a retried ingestion does not
// duplicate). DeleteFile and DeleteStore delete by expression. SetAttributes reads the
// file's rows and upserts them with the new attributes (Milvus cannot update a field by
// expression), 4,096 at a time: the new attributes carry a random generation mark and each
// page asks for rows without it, so a file of any size is covered without relying on a
// result order, and a row read twice stops it with an error. Searches ask for k
// plus 16 results and order ties by chunk id, which Milvus does not do. Every read is
// Strong, so a search sees the writes that preceded it.
//
// Connection. New returns at once; a goroutine dials (MAAS_MILVUS_ADDR, optional token or
// user and password, database) with a timeout per attempt and a backoff from 0.5 s to 30 s
// until one succeeds. Until then every call fails with ErrNotConnected naming the address
// and the last dial error; afterwards gRPC reconnects by itself. A collection that fails a
// call (dropped, released) is checked again, loaded if needed, by the next call.
//
// Tested against milvustest (an in-process gRPC server on the client's own
// UnimplementedMilvusServiceServer) with the conformance suite, and against a real Milvus
// only when MAAS_TEST_MILVUS_ADDR is set: see the README for what has not been run against
// a real Milvus.
package milvus
