package main

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/maas-platform/maas/bench/internal/procstat"
	"github.com/maas-platform/maas/bench/internal/trial"
)

// platform is the shared services every gateway of a run uses, measured in every trial
// beside the proxy so that a figure cannot look cheaper by moving work into them: the PostgreSQL cluster (the
// postmaster and all its backends) and redis-server. Both must run on this machine.
type platform struct {
	pgPID    int // the postmaster
	redisPID int // 0 without Redis
}

// findPlatform finds the postmaster (the parent of the backend serving a fresh connection)
// and redis-server (its INFO process_id).
func findPlatform(ctx context.Context, dbURL, redisURL string) (*platform, error) {
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return nil, fmt.Errorf("find postgres: %w", err)
	}
	defer conn.Close(ctx)
	var backend int
	if err := conn.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&backend); err != nil {
		return nil, fmt.Errorf("find postgres: %w", err)
	}
	pm, _, err := procstat.Parent(backend)
	if err != nil {
		return nil, fmt.Errorf("find postgres: backend %d is not on this machine: %w", backend, err)
	}
	if _, name, err := procstat.Parent(pm); err != nil || !strings.HasPrefix(name, "postgres") {
		return nil, fmt.Errorf("find postgres: parent %d of backend %d is %q (%v), not the postmaster", pm, backend, name, err)
	}
	p := &platform{pgPID: pm}
	if redisURL == "" {
		return p, nil
	}
	ro, err := redis.ParseURL(redisURL)
	if err != nil {
		return nil, fmt.Errorf("find redis: %w", err)
	}
	c := redis.NewClient(ro)
	defer c.Close()
	info, err := c.Info(ctx, "server").Result()
	if err != nil {
		return nil, fmt.Errorf("find redis: %w", err)
	}
	for _, line := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "process_id:"); ok {
			p.redisPID, _ = strconv.Atoi(v)
		}
	}
	if p.redisPID == 0 {
		return nil, fmt.Errorf("find redis: no process_id in INFO server")
	}
	if _, name, err := procstat.Parent(p.redisPID); err != nil || !strings.HasPrefix(name, "redis") {
		return nil, fmt.Errorf("find redis: process %d is %q (%v): is Redis on this machine?", p.redisPID, name, err)
	}
	return p, nil
}

// pgCPU reads the PostgreSQL cluster's CPU so far.
func (p *platform) pgCPU() (time.Duration, error) { return procstat.TreeCPU(p.pgPID) }

// sources are the platform's processes as CPU sources for a trial: the PostgreSQL
// cluster (the postmaster and every process under it) and, with Redis, redis-server. Either
// may idle through a trial; a read that fails fails the trial.
func (p *platform) sources() []trial.Source {
	src := []trial.Source{{Name: "postgres", Read: p.pgCPU}}
	if p.redisPID != 0 {
		src = append(src, trial.Source{Name: "redis", Read: func() (time.Duration, error) { return procstat.TreeCPU(p.redisPID) }})
	}
	return src
}
