// Package file is the Files API (/v1/files, OpenAI's shape): upload (multipart file and
// purpose), list, retrieve, download and delete. It owns the files table and the blob
// store behind the Blobs interface: a local directory (Dir, one control replica) or an
// S3-compatible bucket (S3, needed by several replicas).
//
// An upload streams from the request body into the blob store: control never holds a
// whole file in memory (the S3 store holds one part, 16 MiB by default). Limits: one file
// at most Options.MaxBytes (413), each user at most Limits.MaxCount files (400) and
// Limits.MaxTotal bytes (413), checked before the body is read and again, under a per-user
// lock, when the file is recorded. A file with purpose fine-tune is read back and checked
// (CheckDataset: JSON Lines in the chat format; the first problem is a 400 naming its
// line) and its examples and estimated tokens are recorded.
//
// A sweep (Service.Sweep, RunSweeper) removes stored content that no file names once it is
// older than any upload in progress: files whose owner was deleted (the rows go with the
// user), uploads cut off by a crash, content whose removal failed at delete.
//
// Visibility: a caller sees, downloads and deletes only their own files; an admin reaches
// any file by id; everyone else gets the 404 of a file that does not exist.
package file
