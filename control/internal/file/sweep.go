package file

import (
	"context"
	"fmt"
	"time"
)

// sweepBatch is how many stored keys one query checks against the files table.
const sweepBatch = 500

// Sweep removes stored content that no file names and that was written before cutoff:
// the content of files whose owner was deleted (their rows go with the user), of uploads
// cut off between storing and recording (a crash), and of deletions whose content could
// not be removed. Content written after cutoff may belong to an upload in progress and is
// left alone. It returns how many blobs it removed.
func (s *Service) Sweep(ctx context.Context, cutoff time.Time) (int, error) {
	removed := 0
	var batch []string
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		known, err := s.store.knownKeys(ctx, batch)
		if err != nil {
			return err
		}
		for _, key := range batch {
			if known[key] {
				continue
			}
			if err := s.o.Blobs.Delete(ctx, key); err != nil {
				return err
			}
			removed++
		}
		batch = batch[:0]
		return nil
	}
	err := s.o.Blobs.List(ctx, func(key string, written time.Time) error {
		if !written.Before(cutoff) {
			return nil
		}
		batch = append(batch, key)
		if len(batch) >= sweepBatch {
			return flush()
		}
		return nil
	})
	if err == nil {
		err = flush()
	}
	if d, ok := s.o.Blobs.(Dir); ok && err == nil {
		var n int
		n, err = d.sweepTemp(cutoff)
		removed += n
	}
	if err != nil {
		return removed, fmt.Errorf("file: sweep: %w", err)
	}
	return removed, nil
}

// RunSweeper sweeps every interval until ctx ends. An upload lasts at most
// Options.Timeout, so content older than twice that is no upload in progress.
func (s *Service) RunSweeper(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		n, err := s.Sweep(ctx, time.Now().Add(-2*s.o.Timeout))
		switch {
		case err != nil && ctx.Err() == nil:
			s.log.Warn("file sweep failed", "removed", n, "err", err)
		case n > 0:
			s.log.Info("file sweep removed content no file names", "removed", n)
		}
	}
}
