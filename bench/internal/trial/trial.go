// Package trial holds the rules one benchmark trial is measured by, apart from the
// processes and the load, so that they can be tested on their own:
//
//   - Order rotates the modes (direct, pass-through, gateway) from one trial to the next,
//     so that no mode always runs first (on cold caches) or last (after the others
//     heated the machine).
//   - A Meter reads the CPU of every measured process before and after a trial; a read
//     that fails fails the trial, and so does a proxy that served requests without using
//     any CPU (the wrong process, or a broken read): a zero must never pass for cheap.
//   - WaitLedger waits, with a deadline, until the usage ledger holds exactly one row per
//     request the gateway served in the trial.
package trial

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Order returns the modes of trial i (counted from 0): modes rotated left by i, so that
// over len(modes) trials each mode runs once in each position. modes is not modified.
func Order[T any](modes []T, i int) []T {
	n := len(modes)
	if n == 0 {
		return nil
	}
	out := make([]T, 0, n)
	k := ((i % n) + n) % n
	out = append(out, modes[k:]...)
	return append(out, modes[:k]...)
}

// Source is one measured process, or group of processes (a PostgreSQL cluster).
type Source struct {
	Name string
	// Read returns the CPU time (user+system) the source has used so far.
	Read func() (time.Duration, error)
	// Busy marks a source that must use CPU in any trial that served a request: the
	// proxy under load. PostgreSQL or Redis may legitimately idle through a trial.
	Busy bool
}

// ErrNoCPU reports a busy source whose CPU did not move during a trial that served
// requests.
var ErrNoCPU = errors.New("no CPU used while serving requests: wrong process, or a failed read")

// Meter holds the sources' readings at the start of a trial. It is not safe for
// concurrent use.
type Meter struct {
	src   []Source
	start []time.Duration
}

// Start reads every source; any failed read is returned and no Meter.
func Start(src ...Source) (*Meter, error) {
	m := &Meter{src: src, start: make([]time.Duration, len(src))}
	for i, s := range src {
		d, err := s.Read()
		if err != nil {
			return nil, fmt.Errorf("%s cpu: %w", s.Name, err)
		}
		m.start[i] = d
	}
	return m, nil
}

// Stop reads every source again and returns the CPU each used since Start, in the order
// given to Start. requests is what the trial served: with requests, a busy source that
// used no CPU is an error (ErrNoCPU). A failed read is an error, never a zero.
func (m *Meter) Stop(requests int64) ([]time.Duration, error) {
	used := make([]time.Duration, len(m.src))
	for i, s := range m.src {
		d, err := s.Read()
		if err != nil {
			return nil, fmt.Errorf("%s cpu: %w", s.Name, err)
		}
		used[i] = d - m.start[i]
		if used[i] < 0 {
			return nil, fmt.Errorf("%s cpu went backwards (%v → %v): the process changed", s.Name, m.start[i], d)
		}
		if s.Busy && requests > 0 && used[i] == 0 {
			return nil, fmt.Errorf("%s cpu: %w", s.Name, ErrNoCPU)
		}
	}
	return used, nil
}

// PerRequest is d in microseconds per request; requests must be positive.
func PerRequest(d time.Duration, requests int64) float64 {
	return float64(d.Microseconds()) / float64(requests)
}

// ErrLedgerMismatch reports ledger rows that differ from the requests served.
var ErrLedgerMismatch = errors.New("ledger rows written differ from requests served")

// LedgerCheck waits for a trial's usage records.
type LedgerCheck struct {
	// Count returns the rows the trial has in the ledger so far.
	Count func(ctx context.Context) (int64, error)
	// Poll is the pause between counts (default 100 ms); the first count comes after
	// one Poll, since the gateway writes its records in batches.
	Poll time.Duration
	// Timeout bounds the wait (default 15 s).
	Timeout time.Duration
}

// Wait counts the trial's rows until they equal want, and returns the last count. More
// rows than want fail at once (rows only grow: a duplicate, or a row not from this
// trial); fewer than want when Timeout runs out fail too. Both failures wrap
// ErrLedgerMismatch; a failed count is returned as it is.
func (c LedgerCheck) Wait(ctx context.Context, want int64) (int64, error) {
	poll, timeout := c.Poll, c.Timeout
	if poll <= 0 {
		poll = 100 * time.Millisecond
	}
	if timeout <= 0 {
		timeout = 15 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	t := time.NewTicker(poll)
	defer t.Stop()
	var got int64
	for {
		select {
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return got, fmt.Errorf("%w: %d rows for %d requests after %v", ErrLedgerMismatch, got, want, timeout)
			}
			return got, ctx.Err()
		case <-t.C:
		}
		n, err := c.Count(ctx)
		if err != nil {
			if ctx.Err() != nil {
				continue // the deadline ended the count: report it as such
			}
			return got, fmt.Errorf("count ledger rows: %w", err)
		}
		got = n
		switch {
		case got == want:
			return got, nil
		case got > want:
			return got, fmt.Errorf("%w: %d rows for %d requests", ErrLedgerMismatch, got, want)
		}
	}
}
