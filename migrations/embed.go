// Package migrations holds the platform's versioned SQL schema, embedded in every binary
// that applies it (control, and the test helpers). Files follow goose's format: one file per
// version, each with an Up and a Down section.
package migrations

import "embed"

// FS is the set of migration files, applied in version order.
//
//go:embed *.sql
var FS embed.FS
