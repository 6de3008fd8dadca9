package finetune

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// jobsCollector reports the jobs by status, counted in PostgreSQL at each scrape (so every
// control replica reports the same figures): queued is the training backlog, running the
// jobs on workers.
type jobsCollector struct {
	db   DB
	desc *prometheus.Desc
}

func newJobsCollector(db DB) *jobsCollector {
	return &jobsCollector{db: db, desc: prometheus.NewDesc("maas_control_finetune_jobs",
		"Fine-tuning jobs by status (all replicas see the same counts).", []string{"status"}, nil)}
}

func (c *jobsCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *jobsCollector) Collect(ch chan<- prometheus.Metric) {
	counts := map[string]float64{}
	for _, st := range []string{StatusValidating, StatusQueued, StatusRunning, StatusSucceeded, StatusFailed, StatusCancelled} {
		counts[st] = 0
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	rows, err := c.db.Query(ctx, `SELECT status, count(*) FROM fine_tuning_jobs GROUP BY status`)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(c.desc, err)
		return
	}
	defer rows.Close()
	for rows.Next() {
		var st string
		var n int64
		if err := rows.Scan(&st, &n); err != nil {
			ch <- prometheus.NewInvalidMetric(c.desc, err)
			return
		}
		counts[st] = float64(n)
	}
	if err := rows.Err(); err != nil {
		ch <- prometheus.NewInvalidMetric(c.desc, err)
		return
	}
	for st, n := range counts {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, n, st)
	}
}
