// Package service is control's process: it turns Options into running components (database
// pool, migrations, bootstrap, HTTP server, backend reaper) and implements the subcommands
// serve, migrate, bootstrap and keys.
package service

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/maas-platform/maas/control/internal/adapter"
	"github.com/maas-platform/maas/control/internal/backend"
	"github.com/maas-platform/maas/control/internal/jobs"
	"github.com/maas-platform/maas/control/internal/model"
	"github.com/maas-platform/maas/control/internal/server"
	"github.com/maas-platform/maas/control/internal/usage"
	"github.com/maas-platform/maas/control/internal/user"
	"github.com/maas-platform/maas/pkg/apikey"
	"github.com/maas-platform/maas/pkg/config"
	"github.com/maas-platform/maas/pkg/obs"
	"github.com/maas-platform/maas/pkg/pgdb"
)

// Usage is the command summary printed by `control help`.
const Usage = `usage: control [command] [flags]

commands:
  serve                      run the control plane (default)
  migrate up                 apply every pending migration
  migrate down [N]           roll back the N most recent migrations (default 1)
  migrate status             list migrations and whether they are applied
  migrate version            print the current schema version
  migrate create NAME        write a new empty migration into --dir (default ./migrations)
  bootstrap                  migrate and create the first admin if there is none
  keys create --username U --name N [--models a,b] [--scopes inference,management]
                             create an API key and print only the key
  help                       show this text

Every setting is a MAAS_* environment variable (or .env entry) and a flag; see -h.
`

// Exec runs the subcommand cmd with positional arguments pos. out receives what the
// command prints for the operator (keys, passwords, status); logs go to stderr.
func Exec(ctx context.Context, cmd string, o Options, pos []string, out io.Writer) error {
	switch cmd {
	case "", "serve":
		if len(pos) > 0 {
			return usageErr("serve takes no arguments")
		}
		if err := o.validate(true); err != nil {
			return err
		}
		return Run(ctx, o, out, nil)
	case "migrate":
		return migrateCmd(ctx, o, pos, out)
	case "bootstrap":
		if err := o.validate(false); err != nil {
			return err
		}
		return withPool(ctx, o, func(pool *pgxpool.Pool) error {
			if _, err := migrateUp(ctx, pool, o.logger()); err != nil {
				return err
			}
			return bootstrap(ctx, pool, o, out)
		})
	case "keys":
		if len(pos) != 1 || pos[0] != "create" {
			return usageErr("keys: expected `keys create --username U --name N [--models a,b] [--scopes inference,management]`")
		}
		if o.Username == "" {
			return &config.Error{Name: "--username", Msg: "is required"}
		}
		if o.KeyName == "" {
			return &config.Error{Name: "--name", Msg: "is required"}
		}
		scopes := apikey.DefaultScopes
		if o.Scopes != "" {
			var err error
			if scopes, err = apikey.ParseScopes(o.ScopeList()); err != nil {
				return &config.Error{Name: "--scopes", Msg: err.Error()}
			}
		}
		if err := o.validate(false); err != nil {
			return err
		}
		return withPool(ctx, o, func(pool *pgxpool.Pool) error {
			svc, err := newUserService(pool, o, o.logger())
			if err != nil {
				return err
			}
			key, err := svc.CreateKeyForUsername(ctx, o.Username, o.KeyName, o.ModelList(), scopes)
			if err != nil {
				return fmt.Errorf("keys create: %w", err)
			}
			_, err = fmt.Fprintln(out, key)
			return err
		})
	case "help", "-h", "--help":
		_, err := io.WriteString(out, Usage)
		return err
	}
	return usageErr(fmt.Sprintf("unknown command %q", cmd))
}

// UsageError is a wrong command line; binaries exit with status 2.
type UsageError struct{ Msg string }

func (e *UsageError) Error() string { return e.Msg + "\n\n" + Usage }

func usageErr(msg string) error { return &UsageError{Msg: msg} }

func (o *Options) validate(serve bool) error {
	if err := o.Common.Validate(true, serve); err != nil {
		return err
	}
	if serve {
		if err := o.Common.RequireInternalToken(); err != nil {
			return err
		}
	}
	return nil
}

func (o Options) logger() *slog.Logger {
	return obs.NewLogger(obs.LogOptions{Component: "control", Debug: o.Debug, JSON: o.Environment == config.Production || o.LogJSON, Out: o.LogOut})
}

func withPool(ctx context.Context, o Options, f func(*pgxpool.Pool) error) error {
	pool, err := pgdb.Connect(ctx, o.DatabaseURL)
	if err != nil {
		return err
	}
	defer pool.Close()
	return f(pool)
}

func newUserService(pool *pgxpool.Pool, o Options, log *slog.Logger) (*user.Service, error) {
	key := []byte(o.SecretKey)
	if len(key) == 0 {
		key = make([]byte, 32)
		if _, err := rand.Read(key); err != nil {
			return nil, fmt.Errorf("generate session key: %w", err)
		}
	}
	return user.New(pool, user.Options{
		Hash:           o.HashParams,
		Tokens:         user.NewTokens(key, o.AccessTokenExpire),
		InternalToken:  o.InternalToken,
		Logger:         log,
		LoginLimit:     o.LoginLimit,
		TrustedProxies: o.TrustedProxies,
	})
}

func migrateUp(ctx context.Context, pool *pgxpool.Pool, log *slog.Logger) (int, error) {
	m, err := pgdb.NewMigrator(pool)
	if err != nil {
		return 0, err
	}
	defer m.Close()
	n, err := m.Up(ctx)
	if err != nil {
		return n, err
	}
	v, err := m.Version(ctx)
	if err != nil {
		return n, err
	}
	log.Info("migrations applied", "applied", n, "version", v)
	rn, err := jobs.Migrate(ctx, pool, log)
	if err != nil {
		return n, err
	}
	if rn > 0 {
		log.Info("job queue (River) migrations applied", "applied", rn)
	}
	return n, nil
}

func bootstrap(ctx context.Context, pool *pgxpool.Pool, o Options, out io.Writer) error {
	log := o.logger()
	svc, err := newUserService(pool, o, log)
	if err != nil {
		return err
	}
	created, generated, err := svc.Bootstrap(ctx, o.BootstrapAdminPassword)
	if err != nil {
		return err
	}
	switch {
	case !created:
		log.Info("bootstrap: an admin exists; nothing to do")
	case generated != "":
		log.Warn("bootstrap: created the first admin with a generated password, printed once on stdout; change it with POST /api/v1/users/me/password", "username", user.BootstrapAdmin)
		fmt.Fprintf(out, "bootstrap admin created: username=%s password=%s (shown once)\n", user.BootstrapAdmin, generated)
	default:
		log.Info("bootstrap: created the first admin with the password from MAAS_BOOTSTRAP_ADMIN_PASSWORD", "username", user.BootstrapAdmin)
	}
	return nil
}

// Run serves the control plane until ctx ends. ready, when non-nil, receives the bound
// address once the server listens (used by in-process tests).
func Run(ctx context.Context, o Options, out io.Writer, ready func(addr string)) error {
	log := o.logger()
	log.Info("control starting", append([]any{"version", obs.Version}, o.Redacted...)...)
	if o.SecretKey == "" {
		log.Warn("MAAS_SECRET_KEY is empty: using a random per-process key; sessions will not survive a restart (development only)")
	}

	pool, err := pgdb.Connect(ctx, o.DatabaseURL)
	if err != nil {
		return err
	}
	defer pool.Close()

	if o.AutoMigrate {
		if _, err := migrateUp(ctx, pool, log); err != nil {
			return err
		}
		if err := bootstrap(ctx, pool, o, out); err != nil {
			return err
		}
	} else if err := checkSchema(ctx, pool, log); err != nil {
		return err
	}

	reg := obs.NewRegistry("control")
	queue := newQueue(pool, o, log)
	if o.Knowledge.Index == nil { // tests may bring their own
		idx, stopIndex, err := newVectorIndex(pool, o, log)
		if err != nil {
			return err
		}
		defer func() {
			sctx, cancel := context.WithTimeout(context.Background(), o.ShutdownGrace)
			defer cancel()
			if err := stopIndex(sctx); err != nil {
				log.Warn("vector index did not stop cleanly", "err", err)
			}
		}()
		o.Knowledge.Index = idx
	}
	srv, backends, err := newServer(pool, o, log, reg, queue)
	if err != nil {
		return err
	}
	if err := queue.Start(ctx); err != nil {
		return err
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), o.ShutdownGrace)
		defer cancel()
		if err := queue.Stop(sctx); err != nil {
			log.Warn("job queue did not stop cleanly", "err", err)
		}
	}()

	reapCtx, stopReaper := context.WithCancel(context.Background())
	reaperDone := make(chan struct{})
	go func() {
		defer close(reaperDone)
		backends.RunReaper(reapCtx)
	}()
	defer func() {
		stopReaper()
		<-reaperDone
	}()

	stopSweeper, err := startFileSweeper(pool, o.Files, log)
	if err != nil {
		return err
	}
	defer stopSweeper()

	stopUsage, err := usage.Start(pool, o.Usage, log)
	if err != nil {
		return err
	}
	defer stopUsage()

	err = srv.Serve(ctx, o.ShutdownGrace, func(addr string) {
		log.Info("control listening", "addr", addr)
		if ready != nil {
			ready(addr)
		}
	})
	log.Info("control stopped")
	return err
}

// newServer builds the HTTP server with every domain's routes.
func newServer(pool *pgxpool.Pool, o Options, log *slog.Logger, reg *prometheus.Registry, queue *jobs.Queue) (*server.Server, *backend.Service, error) {
	users, err := newUserService(pool, o, log)
	if err != nil {
		return nil, nil, err
	}
	models := model.New(pool, log)
	reap := o.ReapInterval
	if reap <= 0 {
		reap = time.Second
	}
	adapters := adapter.New(pool, adapter.Options{Logger: log, FoldInterval: o.AdapterFoldInterval})
	backends, err := backend.New(pool, backend.Options{
		Logger: log, Registerer: reg, RemoveAfter: o.BackendRemoveAfter, ReapInterval: reap,
		Placer: adapters,
	})
	if err != nil {
		return nil, nil, err
	}
	sopts := server.DefaultOptions()
	sopts.Addr = o.Addr
	sopts.InternalToken = o.InternalToken
	sopts.Logger = log
	sopts.Registry = reg
	sopts.Auth = users
	sopts.Ready = func(ctx context.Context) error { return pool.Ping(ctx) }
	srv, err := server.New(sopts)
	if err != nil {
		return nil, nil, err
	}
	users.Routes(srv)
	models.Routes(srv)
	backends.Routes(srv)
	adapters.Routes(srv)
	files, err := newFiles(pool, o.Files, log)
	if err != nil {
		return nil, nil, err
	}
	files.Routes(srv)
	ft, err := newFineTune(pool, o, log, reg, files, models, queue)
	if err != nil {
		return nil, nil, err
	}
	ft.Routes(srv)
	kb, err := newKnowledge(pool, o, log, files, queue)
	if err != nil {
		return nil, nil, err
	}
	kb.Routes(srv)
	return srv, backends, nil
}

func checkSchema(ctx context.Context, pool *pgxpool.Pool, log *slog.Logger) error {
	m, err := pgdb.NewMigrator(pool)
	if err != nil {
		return err
	}
	defer m.Close()
	v, err := m.Version(ctx)
	if err != nil {
		return err
	}
	if v < m.Latest() {
		log.Warn("database schema is behind this binary; run `control migrate up`", "version", v, "latest", m.Latest())
	}
	if cur, latest, err := jobs.SchemaVersion(ctx, pool); err != nil || cur < latest {
		log.Warn("the job queue's (River) schema is missing or behind this binary; run `control migrate up`", "version", cur, "latest", latest, "err", err)
	}
	return nil
}

func migrateCmd(ctx context.Context, o Options, pos []string, out io.Writer) error {
	if len(pos) == 0 {
		return usageErr("migrate: expected up, down [N], status, version or create NAME")
	}
	action, args := pos[0], pos[1:]
	if action == "create" {
		if len(args) != 1 {
			return usageErr("migrate create: expected exactly one NAME")
		}
		path, err := CreateMigration(o.Dir, args[0], time.Now())
		if err != nil {
			return err
		}
		_, err = fmt.Fprintln(out, path)
		return err
	}
	n := 1
	switch action {
	case "up", "status", "version":
		if len(args) != 0 {
			return usageErr("migrate " + action + ": takes no arguments")
		}
	case "down":
		if len(args) > 1 {
			return usageErr("migrate down: expected at most one N")
		}
		if len(args) == 1 {
			v, err := strconv.Atoi(args[0])
			if err != nil || v < 1 {
				return usageErr("migrate down: N must be a positive integer")
			}
			n = v
		}
	default:
		return usageErr(fmt.Sprintf("migrate: unknown action %q", action))
	}
	if err := o.validate(false); err != nil {
		return err
	}
	return withPool(ctx, o, func(pool *pgxpool.Pool) error {
		m, err := pgdb.NewMigrator(pool)
		if err != nil {
			return err
		}
		defer m.Close()
		switch action {
		case "up":
			applied, err := m.Up(ctx)
			if err != nil {
				return err
			}
			v, err := m.Version(ctx)
			if err != nil {
				return err
			}
			fmt.Fprintf(out, "applied %d migration(s); version %d\n", applied, v)
			rn, err := jobs.Migrate(ctx, pool, o.logger())
			if err != nil {
				return err
			}
			fmt.Fprintf(out, "job queue (River): %d migration(s) run\n", rn)
		case "down":
			done, err := m.Down(ctx, n)
			if err != nil {
				return err
			}
			v, err := m.Version(ctx)
			if err != nil {
				return err
			}
			fmt.Fprintf(out, "rolled back %d migration(s); version %d\n", done, v)
		case "version":
			v, err := m.Version(ctx)
			if err != nil {
				return err
			}
			fmt.Fprintln(out, v)
		case "status":
			st, err := m.Status(ctx)
			if err != nil {
				return err
			}
			for _, s := range st {
				state, at := "pending", ""
				if s.Applied {
					state, at = "applied", s.AppliedAt.UTC().Format(time.RFC3339)
				}
				fmt.Fprintf(out, "%05d  %-8s %-20s %s\n", s.Version, state, at, s.Name)
			}
			if cur, latest, err := jobs.SchemaVersion(ctx, pool); err == nil {
				fmt.Fprintf(out, "job queue (River) schema: version %d of %d\n", cur, latest)
			}
		}
		return nil
	})
}

// IsUsage reports whether err is a command-line or configuration error (exit status 2).
func IsUsage(err error) bool {
	var u *UsageError
	var c *config.Error
	return errors.As(err, &u) || errors.As(err, &c)
}
