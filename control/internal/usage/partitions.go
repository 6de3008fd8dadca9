// Package usage keeps the usage ledger's storage: usage_records is partitioned by UTC
// calendar month (migration 00010), and this package creates each month's partition ahead
// of time and drops the partitions older than the retention.
//
// What it decides:
//
//   - Ahead: the partitions of the current month and of the next Ahead months exist after
//     every pass. A month without a partition is not an error for the gateways: its rows
//     land in usage_records_default, and the pass that creates the month's partition moves
//     them into it (usage_records_add_month, in the migration), so nothing is refused.
//   - Retention: with RetentionMonths = N > 0, the current month and the N previous
//     calendar months are kept; older month partitions are dropped whole (no DELETE, no
//     vacuum), and rows of those months left in the default partition are deleted, with
//     their sums in usage_monthly.
//     N = 0 keeps everything.
//   - Several control replicas may run passes at the same time: each pass holds the
//     advisory lock usage_records_add_month takes, so they serialise.
//   - Never a stall of the ledger: attaching or dropping a partition takes locks that
//     would make the gateways' writes queue behind a long reader of usage_records (a
//     report); a pass waits at most LockTimeout for each lock, then gives up until the
//     next interval (the gateways' writes went on meanwhile).
//
// Costs: a pass is a few catalog statements, once per Interval (an hour by default).
// Creating a partition whose month already has rows in the default partition moves them
// (one DELETE ... RETURNING into the new table) and scans the default partition once.
package usage

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/maas-platform/maas/pkg/config"
)

// Options configures the maintenance of the ledger's partitions.
type Options struct {
	// RetentionMonths is how many calendar months before the current one the ledger keeps
	// (MAAS_USAGE_RETENTION_MONTHS); older partitions are dropped. 0 keeps everything.
	RetentionMonths int
	// Ahead is how many months after the current one have their partition created in
	// advance (2 when zero).
	Ahead int
	// Interval is how often the partitions are checked (MAAS_USAGE_MAINTENANCE_INTERVAL); 0
	// turns the maintenance off.
	Interval time.Duration
	// LockTimeout bounds each wait for a lock: attaching a partition and dropping one lock
	// usage_records in ways that would queue the gateways' writes behind a long reader, so
	// a pass that cannot have its locks soon gives up and is tried again at the next
	// interval (5s when zero).
	LockTimeout time.Duration
	Logger      *slog.Logger
}

// DefaultOptions returns the defaults: everything kept, two months ahead, hourly.
func DefaultOptions() Options {
	return Options{Ahead: 2, Interval: time.Hour, LockTimeout: 5 * time.Second}
}

// Bind declares the settings on l.
func Bind(l *config.Loader, o *Options) {
	d := DefaultOptions()
	l.Int(&o.RetentionMonths, "MAAS_USAGE_RETENTION_MONTHS", "usage-retention-months", d.RetentionMonths,
		"calendar months of usage records kept before the current one (older monthly partitions are dropped); 0: keep everything")
	l.Duration(&o.Interval, "MAAS_USAGE_MAINTENANCE_INTERVAL", "usage-maintenance-interval", d.Interval,
		"how often the usage ledger's monthly partitions are created ahead and the retention applied; 0: never")
	o.Ahead = d.Ahead
}

// Validate checks o.
func (o Options) Validate() error {
	switch {
	case o.RetentionMonths < 0:
		return &config.Error{Name: "MAAS_USAGE_RETENTION_MONTHS", Msg: "must not be negative"}
	case o.Interval < 0:
		return &config.Error{Name: "MAAS_USAGE_MAINTENANCE_INTERVAL", Msg: "must not be negative"}
	case o.Ahead < 0:
		return errors.New("usage: Ahead must not be negative")
	}
	return nil
}

// DB is what the maintenance needs of a pool (pgxpool.Pool implements it): each step is
// one transaction.
type DB interface {
	Begin(ctx context.Context) (pgx.Tx, error)
}

// Maintainer creates and drops the ledger's monthly partitions. Safe for concurrent use.
type Maintainer struct {
	db DB
	o  Options
}

// New returns a Maintainer; o is validated.
func New(db DB, o Options) (*Maintainer, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	if o.Ahead == 0 {
		o.Ahead = DefaultOptions().Ahead
	}
	if o.LockTimeout <= 0 {
		o.LockTimeout = DefaultOptions().LockTimeout
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return &Maintainer{db: db, o: o}, nil
}

// Pass is what one maintenance pass did.
type Pass struct {
	Ensured []string // the partitions of this month and the months ahead (created or already there)
	Dropped []string // partitions dropped for the retention
	Purged  int64    // rows of expired months deleted from the default partition
}

// Maintain makes sure the partitions of now's month and the Ahead months after it exist,
// then applies the retention.
func (m *Maintainer) Maintain(ctx context.Context, now time.Time) (Pass, error) {
	var p Pass
	month := monthStart(now)
	for i := range m.o.Ahead + 1 {
		var name string
		if err := pgx.BeginFunc(ctx, m.db, func(tx pgx.Tx) error {
			if err := m.lockTimeout(ctx, tx); err != nil {
				return err
			}
			return tx.QueryRow(ctx, `SELECT usage_records_add_month($1)`, month.AddDate(0, i, 0)).Scan(&name)
		}); err != nil {
			return p, fmt.Errorf("create the usage partition of %s: %w", month.AddDate(0, i, 0).Format("2006-01"), err)
		}
		p.Ensured = append(p.Ensured, name)
	}
	if m.o.RetentionMonths == 0 {
		return p, nil
	}
	cutoff := month.AddDate(0, -m.o.RetentionMonths, 0)
	err := pgx.BeginFunc(ctx, m.db, func(tx pgx.Tx) error {
		if err := m.lockTimeout(ctx, tx); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtext('usage_records partitions'))`); err != nil {
			return err
		}
		rows, err := tx.Query(ctx, `SELECT c.relname FROM pg_inherits AS i JOIN pg_class AS c ON c.oid = i.inhrelid
			WHERE i.inhparent = 'usage_records'::regclass AND c.relname ~ '^usage_records_y[0-9]{4}m[0-9]{2}$'
			ORDER BY c.relname`)
		if err != nil {
			return err
		}
		names, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return err
		}
		for _, name := range names {
			if start, ok := partitionMonth(name); ok && start.Before(cutoff) {
				if _, err := tx.Exec(ctx, `DROP TABLE `+pgx.Identifier{name}.Sanitize()); err != nil {
					return fmt.Errorf("drop %s: %w", name, err)
				}
				p.Dropped = append(p.Dropped, name)
			}
		}
		tag, err := tx.Exec(ctx, `DELETE FROM usage_records_default WHERE created_at < $1`, cutoff)
		if err != nil {
			return fmt.Errorf("purge the default partition: %w", err)
		}
		p.Purged = tag.RowsAffected()
		if _, err := tx.Exec(ctx, `DELETE FROM usage_monthly WHERE month < ($1::timestamptz AT TIME ZONE 'UTC')::date`, cutoff); err != nil {
			return fmt.Errorf("purge the monthly sums: %w", err)
		}
		return nil
	})
	if err != nil {
		return p, fmt.Errorf("apply the usage retention of %d months: %w", m.o.RetentionMonths, err)
	}
	return p, nil
}

// lockTimeout sets the transaction's lock_timeout to LockTimeout.
func (m *Maintainer) lockTimeout(ctx context.Context, tx pgx.Tx) error {
	_, err := tx.Exec(ctx, `SELECT set_config('lock_timeout', $1, true)`, strconv.FormatInt(m.o.LockTimeout.Milliseconds(), 10))
	return err
}

// Run maintains the partitions at once and then every Interval until ctx ends. A failed
// pass is logged and tried again at the next interval.
func (m *Maintainer) Run(ctx context.Context) {
	if m.o.Interval <= 0 {
		return
	}
	t := time.NewTicker(m.o.Interval)
	defer t.Stop()
	for {
		p, err := m.Maintain(ctx, time.Now())
		switch {
		case err != nil && ctx.Err() == nil:
			m.o.Logger.Warn("usage ledger partitions: maintenance failed; the default partition takes the rows of a month without one",
				"err", err)
		case len(p.Dropped) > 0 || p.Purged > 0:
			m.o.Logger.Info("usage ledger partitions: retention applied", "dropped", p.Dropped, "purged_rows", p.Purged,
				"retention_months", m.o.RetentionMonths)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Start runs the maintenance in a goroutine, logging to log; stop ends it and waits for it.
func Start(db DB, o Options, log *slog.Logger) (stop func(), err error) {
	o.Logger = log
	m, err := New(db, o)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		m.Run(ctx)
	}()
	return func() { cancel(); <-done }, nil
}

// monthStart returns the first instant of t's calendar month in UTC.
func monthStart(t time.Time) time.Time {
	t = t.UTC()
	return time.Date(t.Year(), t.Month(), 1, 0, 0, 0, 0, time.UTC)
}

// partitionMonth reads the month of a partition named usage_records_yYYYYmMM.
func partitionMonth(name string) (time.Time, bool) {
	const prefix = "usage_records_y"
	if len(name) != len(prefix)+7 || name[:len(prefix)] != prefix || name[len(prefix)+4] != 'm' {
		return time.Time{}, false
	}
	y, err1 := strconv.Atoi(name[len(prefix) : len(prefix)+4])
	mo, err2 := strconv.Atoi(name[len(prefix)+5:])
	if err1 != nil || err2 != nil || mo < 1 || mo > 12 {
		return time.Time{}, false
	}
	return time.Date(y, time.Month(mo), 1, 0, 0, 0, 0, time.UTC), true
}
