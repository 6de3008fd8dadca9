package server

import (
	"context"
	"slices"

	"github.com/valyala/fasthttp"

	"github.com/maas-platform/maas/pkg/apikey"
)

// Role names seeded by the migrations.
const (
	RoleAdmin     = "admin"
	RoleDeveloper = "developer"
	RoleUser      = "user"
)

// Principal is an authenticated caller of /api/v1.
type Principal struct {
	UserID   int64
	Username string
	Roles    []string
	KeyID    int64  // the API key used, 0 for a session token
	Method   string // "jwt", "api_key" or "gateway"
	// Scopes are what the caller may reach (apikey.ScopeFor): the key's scopes, or every
	// scope for a console session. Routes check them before the handler runs.
	Scopes apikey.Scopes
}

// HasRole reports whether p has role.
func (p *Principal) HasRole(role string) bool { return slices.Contains(p.Roles, role) }

// IsAdmin reports whether p has the admin role.
func (p *Principal) IsAdmin() bool { return p.HasRole(RoleAdmin) }

// Authenticator turns a request's credentials into a Principal. It returns an *apierr.Error
// of kind Unauthenticated when the credentials are missing, malformed, expired or revoked,
// or belong to a disabled user. Implementations must be safe for concurrent use.
type Authenticator interface {
	Authenticate(ctx context.Context, req *fasthttp.Request) (*Principal, error)
}

// Access is what a route requires of its caller.
type Access uint8

const (
	// Public routes need no credentials (health, login).
	Public Access = iota
	// Authenticated routes accept any active user; handlers narrow further themselves
	// (own resources only unless admin).
	Authenticated
	// AdminOnly routes need the admin role.
	AdminOnly
	// Internal routes need the internal token (workers, gateways).
	Internal
)

func (a Access) String() string {
	switch a {
	case Public:
		return "public"
	case Authenticated:
		return "authenticated"
	case AdminOnly:
		return "admin"
	case Internal:
		return "internal"
	}
	return "unknown"
}
