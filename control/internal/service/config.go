package service

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"time"

	"github.com/maas-platform/maas/control/internal/usage"
	"github.com/maas-platform/maas/control/internal/user"
	"github.com/maas-platform/maas/pkg/config"
)

// Options is control's configuration, loaded from .env, the environment and flags.
type Options struct {
	config.Common
	// Addr is where the HTTP API listens (MAAS_CONTROL_ADDR).
	Addr string
	// BootstrapAdminPassword is the first admin's password; empty means generate one and
	// print it once (MAAS_BOOTSTRAP_ADMIN_PASSWORD).
	BootstrapAdminPassword string
	// AutoMigrate applies pending migrations and the bootstrap when serve starts
	// (MAAS_AUTO_MIGRATE).
	AutoMigrate bool
	// BackendRemoveAfter is how long an unhealthy backend stays listed before it is removed
	// (MAAS_BACKEND_REMOVE_AFTER).
	BackendRemoveAfter time.Duration
	// ShutdownGrace bounds graceful shutdown (MAAS_SHUTDOWN_GRACE).
	ShutdownGrace time.Duration
	// LogJSON writes JSON log lines outside production too (MAAS_LOG_JSON).
	LogJSON bool
	// TrustedProxies are the peers (gateways) whose X-Forwarded-For header names the client
	// address that the failed-login limit counts (MAAS_TRUSTED_PROXIES, comma-separated
	// CIDRs or addresses, or "none"; loopback by default).
	TrustedProxies []netip.Prefix

	// Files configures the Files API and its store (MAAS_FILES_*).
	Files FilesOptions
	// FineTune configures fine-tuning and the job queue (MAAS_FINETUNE_*, MAAS_JOBS_*).
	FineTune FineTuneOptions
	// Knowledge configures vector stores and their ingestion (MAAS_KNOWLEDGE_*, MAAS_GATEWAY_URL).
	Knowledge KnowledgeOptions
	// Milvus selects Milvus as the vector index when its address is set (MAAS_MILVUS_*).
	Milvus MilvusOptions
	// Usage configures the usage ledger's monthly partitions (MAAS_USAGE_*).
	Usage usage.Options

	// LoginLimit bounds failed logins per username and client IP (zero: the defaults,
	// 10 per username and 50 per IP in 5 minutes; tests only).
	LoginLimit user.LoginLimit

	// ReapInterval is how often silent backends are looked for (1s when zero; tests only).
	ReapInterval time.Duration
	// AdapterFoldInterval is how often the ledger is folded into adapters' last uses
	// (adapter.FoldInterval when zero; tests only).
	AdapterFoldInterval time.Duration
	// HashParams overrides the argon2id cost (zero: the defaults; tests only).
	HashParams user.HashParams

	// LogOut receives the logs (stderr when nil).
	LogOut io.Writer

	// Command-specific flags.
	Dir      string // migrate create: target folder
	Username string // keys create
	KeyName  string // keys create
	Models   string // keys create: comma-separated
	Scopes   string // keys create: comma-separated (default inference)

	// Redacted is the effective configuration for the start-up log line.
	Redacted []any
}

// Load parses args (everything after the subcommand) and returns the options and the
// positional arguments. Flags and positional arguments may be interleaved.
func Load(args []string) (Options, []string, error) {
	var o Options
	l, err := config.NewLoader("control", "")
	if err != nil {
		return o, nil, &config.Error{Name: ".env", Msg: err.Error()}
	}
	o.Common.Bind(l)
	l.String(&o.Addr, "MAAS_CONTROL_ADDR", "addr", "127.0.0.1:8001", "listen address of the control API")
	l.Secret(&o.BootstrapAdminPassword, "MAAS_BOOTSTRAP_ADMIN_PASSWORD", "bootstrap-admin-password", "", "password of the first admin (generated and printed once when empty)")
	l.Bool(&o.AutoMigrate, "MAAS_AUTO_MIGRATE", "auto-migrate", true, "apply migrations and bootstrap the first admin when serve starts")
	l.Duration(&o.BackendRemoveAfter, "MAAS_BACKEND_REMOVE_AFTER", "backend-remove-after", 5*time.Minute, "remove a backend this long after its last heartbeat once it is unhealthy")
	l.Duration(&o.ShutdownGrace, "MAAS_SHUTDOWN_GRACE", "shutdown-grace", 15*time.Second, "time allowed for graceful shutdown")
	l.Bool(&o.LogJSON, "MAAS_LOG_JSON", "log-json", false, "JSON log lines")
	bindFiles(l, &o.Files)
	bindFineTune(l, &o.FineTune)
	bindKnowledge(l, &o.Knowledge)
	bindMilvus(l, &o.Milvus)
	usage.Bind(l, &o.Usage)
	var proxies string
	l.String(&proxies, "MAAS_TRUSTED_PROXIES", "trusted-proxies", "127.0.0.0/8,::1/128", "comma-separated CIDRs of proxies (gateways) whose X-Forwarded-For is trusted for the login limit, or none")
	fs := l.FlagSet()
	fs.StringVar(&o.Dir, "dir", "migrations", "migrate create: folder to write the new migration into")
	fs.StringVar(&o.Username, "username", "", "keys create: owner of the new key")
	fs.StringVar(&o.KeyName, "name", "", "keys create: name of the new key")
	fs.StringVar(&o.Models, "models", "", "keys create: comma-separated models the key may use (default: all)")
	fs.StringVar(&o.Scopes, "scopes", "", "keys create: comma-separated scopes, inference and/or management (default: inference)")

	var pos []string
	for {
		if err := l.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return o, nil, err
			}
			return o, nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			break
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
	if o.Addr == "" {
		return o, nil, &config.Error{Name: "MAAS_CONTROL_ADDR", Msg: "is empty"}
	}
	if o.BackendRemoveAfter <= 0 {
		return o, nil, &config.Error{Name: "MAAS_BACKEND_REMOVE_AFTER", Msg: "must be a positive duration"}
	}
	if o.ShutdownGrace <= 0 {
		return o, nil, &config.Error{Name: "MAAS_SHUTDOWN_GRACE", Msg: "must be a positive duration"}
	}
	if err := o.Files.validate(); err != nil {
		return o, nil, err
	}
	if err := o.FineTune.validate(); err != nil {
		return o, nil, err
	}
	if err := o.Knowledge.validate(); err != nil {
		return o, nil, err
	}
	if err := o.Milvus.validate(); err != nil {
		return o, nil, err
	}
	if err := o.Usage.Validate(); err != nil {
		return o, nil, err
	}
	if o.TrustedProxies, err = ParsePrefixes(proxies); err != nil {
		return o, nil, &config.Error{Name: "MAAS_TRUSTED_PROXIES", Msg: err.Error()}
	}
	o.Redacted = l.Redacted()
	return o, pos, nil
}

// ParsePrefixes parses a comma-separated list of CIDRs or single addresses; "none" is the
// empty list.
func ParsePrefixes(list string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	if strings.TrimSpace(list) == "none" {
		return nil, nil
	}
	for _, f := range strings.Split(list, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		if p, err := netip.ParsePrefix(f); err == nil {
			out = append(out, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(f)
		if err != nil {
			return nil, fmt.Errorf("%q is neither a CIDR nor an IP address", f)
		}
		out = append(out, netip.PrefixFrom(a, a.BitLen()))
	}
	return out, nil
}

// ModelList splits the --models flag.
func (o Options) ModelList() []string { return splitList(o.Models) }

// ScopeList splits the --scopes flag.
func (o Options) ScopeList() []string { return splitList(o.Scopes) }

func splitList(s string) []string {
	var out []string
	for _, m := range strings.Split(s, ",") {
		if m = strings.TrimSpace(m); m != "" {
			out = append(out, m)
		}
	}
	return out
}
