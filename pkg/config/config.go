// Package config loads the MAAS_* settings shared by the platform's binaries.
//
// Values come, in increasing precedence, from built-in defaults, an optional .env file in
// the working directory, the process environment, and command-line flags. Each binary
// declares its own settings with a Loader; the common ones (MAAS_DEBUG, MAAS_ENVIRONMENT,
// MAAS_DATABASE_URL, …) are in Common.
package config

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/joho/godotenv"
)

// ExampleSecretKey is the secret written in the original brief's example .env file. It is
// public, so production mode refuses it.
const ExampleSecretKey = "your-secret-key-change-in-production"

// Error is an invalid setting. Binaries print it and exit with status 2.
type Error struct {
	Name string // the variable, e.g. MAAS_DATABASE_URL
	Msg  string
}

func (e *Error) Error() string { return fmt.Sprintf("invalid configuration: %s: %s", e.Name, e.Msg) }

// ExitCode is the status a binary exits with on invalid configuration.
const ExitCode = 2

// Loader binds settings to flags whose defaults come from the environment. It is not
// safe for concurrent use; build it, call Parse, then read the bound values.
type Loader struct {
	fs      *flag.FlagSet
	env     map[string]string
	errs    []error
	secrets map[string]bool
	names   []string // environment names in declaration order
	flagOf  map[string]string
}

// NewLoader reads the .env file in dir (when present; a missing file is fine) under the
// process environment, which wins over the file.
func NewLoader(name, dir string) (*Loader, error) {
	env := map[string]string{}
	path := ".env"
	if dir != "" {
		path = dir + string(os.PathSeparator) + ".env"
	}
	if fileEnv, err := godotenv.Read(path); err == nil {
		for k, v := range fileEnv {
			env[k] = v
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	for _, kv := range os.Environ() {
		if k, v, ok := strings.Cut(kv, "="); ok && strings.HasPrefix(k, "MAAS_") {
			env[k] = v
		}
	}
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	return &Loader{fs: fs, env: env, secrets: map[string]bool{}, flagOf: map[string]string{}}, nil
}

// FlagSet exposes the underlying flags, for binaries that add their own.
func (l *Loader) FlagSet() *flag.FlagSet { return l.fs }

// Env returns the raw value of an environment setting (from .env or the environment).
func (l *Loader) Env(name string) (string, bool) {
	v, ok := l.env[name]
	return v, ok
}

func (l *Loader) register(envName, flagName string, secret bool) {
	l.names = append(l.names, envName)
	l.flagOf[flagName] = envName
	if secret {
		l.secrets[envName] = true
	}
}

// String binds a string setting.
func (l *Loader) String(p *string, envName, flagName, def, usage string) {
	l.register(envName, flagName, false)
	if v, ok := l.env[envName]; ok {
		def = v
	}
	l.fs.StringVar(p, flagName, def, usage+" ($"+envName+")")
}

// Secret binds a string setting that is never logged.
func (l *Loader) Secret(p *string, envName, flagName, def, usage string) {
	l.String(p, envName, flagName, def, usage)
	l.secrets[envName] = true
}

// Bool binds a boolean setting; the environment accepts true/false/1/0/yes/no.
func (l *Loader) Bool(p *bool, envName, flagName string, def bool, usage string) {
	l.register(envName, flagName, false)
	if v, ok := l.env[envName]; ok {
		b, err := parseBool(v)
		if err != nil {
			l.errs = append(l.errs, &Error{envName, fmt.Sprintf("%q is not a boolean (use true or false)", v)})
		} else {
			def = b
		}
	}
	l.fs.BoolVar(p, flagName, def, usage+" ($"+envName+")")
}

// Int binds an integer setting.
func (l *Loader) Int(p *int, envName, flagName string, def int, usage string) {
	l.register(envName, flagName, false)
	if v, ok := l.env[envName]; ok {
		n, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil {
			l.errs = append(l.errs, &Error{envName, fmt.Sprintf("%q is not an integer", v)})
		} else {
			def = n
		}
	}
	l.fs.IntVar(p, flagName, def, usage+" ($"+envName+")")
}

// Duration binds a duration setting ("30s", "2m"; a bare number means seconds).
func (l *Loader) Duration(p *time.Duration, envName, flagName string, def time.Duration, usage string) {
	l.register(envName, flagName, false)
	if v, ok := l.env[envName]; ok {
		d, err := ParseDuration(v)
		if err != nil {
			l.errs = append(l.errs, &Error{envName, err.Error()})
		} else {
			def = d
		}
	}
	l.fs.DurationVar(p, flagName, def, usage+" ($"+envName+")")
}

// Parse parses args and returns the first invalid setting, if any.
func (l *Loader) Parse(args []string) error {
	l.fs.SetOutput(io.Discard)
	if err := l.fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			l.fs.SetOutput(os.Stderr)
			l.fs.PrintDefaults()
			return err
		}
		return &Error{Name: "flags", Msg: err.Error()}
	}
	if len(l.errs) > 0 {
		return l.errs[0]
	}
	return nil
}

// Redacted returns the effective settings as log attributes, secrets and URL passwords hidden.
func (l *Loader) Redacted() []any {
	var attrs []any
	names := map[string]string{}
	l.fs.VisitAll(func(f *flag.Flag) {
		if env, ok := l.flagOf[f.Name]; ok {
			names[env] = f.Value.String()
		}
	})
	keys := make([]string, 0, len(names))
	for k := range names {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		v := names[k]
		switch {
		case l.secrets[k] && v != "":
			v = "[redacted]"
		case strings.Contains(v, "://"):
			v = RedactURL(v)
		}
		attrs = append(attrs, slog.String(k, v))
	}
	return attrs
}

// RedactURL hides the password of a URL.
func RedactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.User == nil {
		return raw
	}
	if _, has := u.User.Password(); has {
		u.User = url.UserPassword(u.User.Username(), "xxxxx")
	}
	return u.String()
}

func parseBool(v string) (bool, error) {
	switch strings.ToLower(strings.TrimSpace(v)) {
	case "1", "true", "yes", "on":
		return true, nil
	case "0", "false", "no", "off", "":
		return false, nil
	}
	return false, errors.New("not a boolean")
}

// ParseDuration accepts Go durations ("1m30s") and bare numbers of seconds ("30").
func ParseDuration(v string) (time.Duration, error) {
	v = strings.TrimSpace(v)
	if n, err := strconv.ParseFloat(v, 64); err == nil {
		if n < 0 {
			return 0, fmt.Errorf("%q is negative", v)
		}
		return time.Duration(n * float64(time.Second)), nil
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		return 0, fmt.Errorf("%q is not a duration (e.g. 30s, 2m)", v)
	}
	if d < 0 {
		return 0, fmt.Errorf("%q is negative", v)
	}
	return d, nil
}

// NormalizeDatabaseURL accepts the forms written in the brief's .env
// (postgresql+asyncpg://, postgresql://, postgres://) and returns a URL pgx understands.
func NormalizeDatabaseURL(raw string) (string, error) {
	raw = strings.TrimSpace(raw)
	if raw == "" {
		return "", errors.New("is empty")
	}
	scheme, rest, ok := strings.Cut(raw, "://")
	if !ok {
		if strings.Contains(raw, "=") { // key=value DSN
			return raw, nil
		}
		return "", fmt.Errorf("%q is not a PostgreSQL URL (postgresql://user:pass@host:port/db)", RedactURL(raw))
	}
	switch strings.ToLower(scheme) {
	case "postgres", "postgresql", "postgresql+asyncpg", "postgresql+psycopg", "postgresql+psycopg2", "postgresql+pg8000":
	default:
		return "", fmt.Errorf("scheme %q is not PostgreSQL (use postgresql://)", scheme)
	}
	u, err := url.Parse("postgresql://" + rest)
	if err != nil {
		return "", fmt.Errorf("not a valid URL: %v", errors.Unwrap(err))
	}
	if u.Host == "" && u.Query().Get("host") == "" {
		return "", errors.New("has no host")
	}
	return u.String(), nil
}

// Environment values.
const (
	Development = "development"
	Production  = "production"
)

// Common holds the settings every process reads.
type Common struct {
	Debug                 bool
	Environment           string
	DatabaseURL           string
	RedisURL              string
	SecretKey             string
	AccessTokenExpire     time.Duration
	InternalToken         string
	ControlURL            string
	accessTokenExpireMins int
}

// Bind declares the common settings on l.
func (c *Common) Bind(l *Loader) {
	l.Bool(&c.Debug, "MAAS_DEBUG", "debug", false, "debug logging")
	l.String(&c.Environment, "MAAS_ENVIRONMENT", "environment", Development, "development or production")
	dbDefault := ""
	if v, ok := l.Env("MAAS_DATABASE_URL_SYNC"); ok {
		dbDefault = v
	}
	l.String(&c.DatabaseURL, "MAAS_DATABASE_URL", "database-url", dbDefault, "PostgreSQL URL")
	l.String(&c.RedisURL, "MAAS_REDIS_URL", "redis-url", "", "Redis URL for global limits (optional)")
	l.Secret(&c.SecretKey, "MAAS_SECRET_KEY", "secret-key", "", "key that signs console sessions (JWT)")
	l.Int(&c.accessTokenExpireMins, "MAAS_ACCESS_TOKEN_EXPIRE_MINUTES", "access-token-expire-minutes", 30, "console session lifetime in minutes")
	l.Secret(&c.InternalToken, "MAAS_INTERNAL_TOKEN", "internal-token", "", "shared token between platform processes")
	l.String(&c.ControlURL, "MAAS_CONTROL_URL", "control-url", "http://127.0.0.1:8001", "control plane base URL")
}

// Validate checks the common settings; needDB and needSecret say which ones this process uses.
func (c *Common) Validate(needDB, needSecret bool) error {
	switch c.Environment {
	case Development, Production:
	default:
		return &Error{"MAAS_ENVIRONMENT", fmt.Sprintf("%q is neither development nor production", c.Environment)}
	}
	if needDB {
		if c.DatabaseURL == "" {
			return &Error{"MAAS_DATABASE_URL", "is required (postgresql://user:pass@host:port/db)"}
		}
		u, err := NormalizeDatabaseURL(c.DatabaseURL)
		if err != nil {
			return &Error{"MAAS_DATABASE_URL", err.Error()}
		}
		c.DatabaseURL = u
	}
	if c.RedisURL != "" {
		u, err := url.Parse(c.RedisURL)
		if err != nil || (u.Scheme != "redis" && u.Scheme != "rediss" && u.Scheme != "unix") {
			return &Error{"MAAS_REDIS_URL", fmt.Sprintf("%q is not a redis:// URL", RedactURL(c.RedisURL))}
		}
	}
	if c.accessTokenExpireMins <= 0 {
		return &Error{"MAAS_ACCESS_TOKEN_EXPIRE_MINUTES", "must be a positive number of minutes"}
	}
	c.AccessTokenExpire = time.Duration(c.accessTokenExpireMins) * time.Minute
	if needSecret {
		if c.Environment == Production && (c.SecretKey == "" || c.SecretKey == ExampleSecretKey) {
			return &Error{"MAAS_SECRET_KEY", "production mode needs a secret key of your own (not empty, not the example)"}
		}
		if c.Environment == Production && len(c.SecretKey) < 32 {
			return &Error{"MAAS_SECRET_KEY", "production mode needs at least 32 characters"}
		}
	}
	if c.InternalToken != "" && len(c.InternalToken) < 16 {
		return &Error{"MAAS_INTERNAL_TOKEN", "must be at least 16 characters"}
	}
	if c.ControlURL != "" {
		if u, err := url.Parse(c.ControlURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return &Error{"MAAS_CONTROL_URL", fmt.Sprintf("%q is not an http(s) URL", c.ControlURL)}
		}
	}
	return nil
}

// RequireInternalToken fails when MAAS_INTERNAL_TOKEN is unset; processes that talk to
// each other (control, gateway, worker) call it. There is no default token: a fixed one
// would be a known credential in every deployment.
func (c *Common) RequireInternalToken() error {
	if c.InternalToken == "" {
		return &Error{"MAAS_INTERNAL_TOKEN", "is required: a random secret (16+ characters) shared by control, gateways and workers"}
	}
	return nil
}

// Fatal prints a configuration error to stderr and exits with ExitCode.
func Fatal(binary string, err error) {
	fmt.Fprintf(os.Stderr, "%s: %v\n", binary, err)
	os.Exit(ExitCode)
}
