package service

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
)

var (
	migrationFileRE = regexp.MustCompile(`^(\d+)_.+\.sql$`)
	migrationNameRE = regexp.MustCompile(`[^a-z0-9]+`)
)

// CreateMigration writes dir/NNNNN_name.sql, numbered one past the highest existing
// migration, with empty goose Up and Down sections, and returns its path.
func CreateMigration(dir, name string, now time.Time) (string, error) {
	slug := strings.Trim(migrationNameRE.ReplaceAllString(strings.ToLower(name), "_"), "_")
	if slug == "" {
		return "", &UsageError{Msg: fmt.Sprintf("migrate create: %q has no letters or digits to name a file", name)}
	}
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return "", fmt.Errorf("create migration: %w", err)
		}
	} else if err != nil {
		return "", fmt.Errorf("create migration: %w", err)
	}
	var highest int64
	for _, e := range entries {
		m := migrationFileRE.FindStringSubmatch(e.Name())
		if m == nil {
			continue
		}
		if v, err := strconv.ParseInt(m[1], 10, 64); err == nil && v > highest {
			highest = v
		}
	}
	path := filepath.Join(dir, fmt.Sprintf("%05d_%s.sql", highest+1, slug))
	body := fmt.Sprintf(`-- %s (created %s)

-- +goose Up

-- +goose Down
`, name, now.UTC().Format("2006-01-02"))
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return "", fmt.Errorf("create migration: %w", err)
	}
	if _, err := f.WriteString(body); err != nil {
		f.Close()
		return "", fmt.Errorf("create migration: %w", err)
	}
	if err := f.Close(); err != nil {
		return "", fmt.Errorf("create migration: %w", err)
	}
	return path, nil
}
