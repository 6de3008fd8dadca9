package user

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"time"

	"github.com/maas-platform/maas/pkg/apikey"
)

// Options configures a Service.
type Options struct {
	Hash          HashParams
	Tokens        *Tokens
	InternalToken string // verifies identities forwarded by the gateway
	Logger        *slog.Logger
	// LoginLimit bounds failed logins (zero fields: DefaultLoginLimit's).
	LoginLimit LoginLimit
	// TrustedProxies are the peers (gateways) whose X-Forwarded-For names the client
	// address counted by LoginLimit; other peers are counted by their own address.
	TrustedProxies []netip.Prefix
}

// Service is users, roles, sessions, API keys and quotas: the logic over Store and the
// HTTP handlers. Safe for concurrent use.
type Service struct {
	store          *Store
	hash           HashParams
	tokens         *Tokens
	internalToken  string
	log            *slog.Logger
	limiter        *loginLimiter
	trustedProxies []netip.Prefix
	now            func() time.Time
	dummyHash      string
}

// New returns a Service over db.
func New(db DB, o Options) (*Service, error) {
	if o.Tokens == nil || o.Logger == nil {
		return nil, errors.New("user: tokens and logger are required")
	}
	if o.Hash.MemoryKiB == 0 {
		o.Hash = DefaultHashParams()
	}
	dummy, err := HashPassword("not a real password", o.Hash)
	if err != nil {
		return nil, err
	}
	return &Service{
		store: NewStore(db), hash: o.Hash, tokens: o.Tokens, internalToken: o.InternalToken,
		log: o.Logger, now: time.Now, dummyHash: dummy,
		limiter: newLoginLimiter(o.LoginLimit), trustedProxies: o.TrustedProxies,
	}, nil
}

// Store exposes the SQL layer (for the CLI and tests).
func (s *Service) Store() *Store { return s.store }

// BootstrapAdmin is the username of the first admin.
const BootstrapAdmin = "admin"

// Bootstrap creates the first admin when no user has the admin role. With an empty
// password it generates one and returns it (generated = true) so the caller can show it
// once. It does nothing when an admin exists: calling it again is harmless.
func (s *Service) Bootstrap(ctx context.Context, password string) (created bool, generated string, err error) {
	exists, err := s.store.AdminExists(ctx)
	if err != nil || exists {
		return false, "", err
	}
	if password == "" {
		if password, err = GeneratePassword(); err != nil {
			return false, "", err
		}
		generated = password
	} else if len(password) < MinPasswordLen {
		return false, "", fmt.Errorf("bootstrap admin: MAAS_BOOTSTRAP_ADMIN_PASSWORD must have at least %d characters", MinPasswordLen)
	}
	hash, err := HashPassword(password, s.hash)
	if err != nil {
		return false, "", err
	}
	_, err = s.store.Create(ctx, NewUser{
		Username: BootstrapAdmin, FullName: "Administrator", PasswordHash: hash, IsActive: true,
		Roles: []string{"admin"},
	})
	var dup *DuplicateError
	if errors.As(err, &dup) {
		// Another control instance won the race, or a user named admin exists without the
		// admin role; both are left alone.
		if exists, err2 := s.store.AdminExists(ctx); err2 == nil && exists {
			return false, "", nil
		}
		return false, "", fmt.Errorf("bootstrap admin: a user named %q exists but has no admin role; grant it with SQL or rename that user", BootstrapAdmin)
	}
	if err != nil {
		return false, "", fmt.Errorf("bootstrap admin: %w", err)
	}
	return true, generated, nil
}

// CreatedKey is a new key with its secret, shown once.
type CreatedKey struct {
	Key
	Secret string `json:"key"`
}

// CreateKey makes a key for userID. The secret is returned and never stored.
func (s *Service) CreateKey(ctx context.Context, n NewKey) (*CreatedKey, error) {
	secret, err := apikey.Generate()
	if err != nil {
		return nil, fmt.Errorf("create key: %w", err)
	}
	h := apikey.Sum([]byte(secret))
	n.Hash = h[:]
	n.Prefix = apikey.Visible(secret)
	k, err := s.store.CreateKey(ctx, n)
	if err != nil {
		return nil, err
	}
	return &CreatedKey{Key: *k, Secret: secret}, nil
}

// CreateKeyForUsername is CreateKey by username (the `control keys create` command, run by
// an operator: any scopes may be given).
func (s *Service) CreateKeyForUsername(ctx context.Context, username, name string, models []string, scopes apikey.Scopes) (string, error) {
	id, err := s.store.IDByUsername(ctx, username)
	if err != nil {
		return "", err
	}
	if err := validKeyName(name); err != nil {
		return "", err
	}
	for i, m := range models {
		models[i] = strings.TrimSpace(m)
	}
	if len(models) == 0 {
		models = nil
	}
	k, err := s.CreateKey(ctx, NewKey{UserID: id, Name: name, Models: models, Scopes: scopes})
	if err != nil {
		return "", err
	}
	return k.Secret, nil
}
