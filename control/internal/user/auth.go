package user

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/maas-platform/maas/control/internal/server"
	"github.com/maas-platform/maas/pkg/apierr"
	"github.com/maas-platform/maas/pkg/apikey"
	"github.com/maas-platform/maas/pkg/internalauth"
)

func unauthenticated(format string, args ...any) *apierr.Error {
	return apierr.New(apierr.Unauthenticated, format, args...)
}

// Authenticate implements server.Authenticator. It accepts, in this order: an identity
// signed by the gateway (X-Maas-Identity-Sig), a bearer API key ("sk-…"), or a bearer
// session token (JWT). The user must exist and be active; a key must be neither revoked
// nor expired. The Principal carries the key's scopes, read from the database (a session
// has every scope); the server checks them against the route (apikey.ScopeFor).
func (s *Service) Authenticate(ctx context.Context, req *fasthttp.Request) (*server.Principal, error) {
	now := s.now()
	if len(req.Header.Peek(internalauth.HeaderSignature)) > 0 {
		id, err := internalauth.Verify(s.internalToken, func(h string) string { return string(req.Header.Peek(h)) }, now)
		if err != nil {
			return nil, unauthenticated("invalid forwarded identity")
		}
		scopes := apikey.AllScopes // an identity without a key: a service acting as the user
		if id.KeyID > 0 {
			k, err := s.store.KeyByID(ctx, id.KeyID)
			if err := s.checkKey(ctx, k, err, now, id.UserID); err != nil {
				return nil, err
			}
			scopes = k.Scopes
		}
		return s.principal(ctx, id.UserID, id.KeyID, scopes, "gateway")
	}
	auth := string(req.Header.Peek("Authorization"))
	if auth == "" {
		return nil, unauthenticated("missing credentials: send Authorization: Bearer <token or API key>")
	}
	cred, ok := strings.CutPrefix(auth, "Bearer ")
	if !ok {
		return nil, unauthenticated("unsupported authorization scheme; use Bearer")
	}
	cred = strings.TrimSpace(cred)
	if strings.HasPrefix(cred, apikey.Prefix) {
		if !apikey.Valid(cred) {
			return nil, unauthenticated("invalid API key")
		}
		h := apikey.Sum([]byte(cred))
		owner, err := s.store.KeyByHash(ctx, h[:])
		if errors.Is(err, ErrNotFound) {
			return nil, unauthenticated("invalid API key")
		}
		if err := s.checkKey(ctx, owner, err, now, 0); err != nil {
			return nil, err
		}
		return s.principal(ctx, owner.UserID, owner.KeyID, owner.Scopes, "api_key")
	}
	sess, err := s.tokens.Parse(cred)
	if errors.Is(err, ErrTokenExpired) {
		return nil, unauthenticated("session token expired; log in again")
	}
	if err != nil {
		return nil, &apierr.Error{Kind: apierr.Unauthenticated, Message: "invalid session token", Err: err}
	}
	u, err := s.activeUser(ctx, sess.UserID)
	if err != nil {
		return nil, err
	}
	if u.SessionVersion != sess.Version {
		return nil, unauthenticated("session ended (password changed or account disabled); log in again")
	}
	return principalOf(u, 0, apikey.AllScopes, "jwt"), nil
}

func (s *Service) checkKey(_ context.Context, k *KeyOwner, lookupErr error, now time.Time, wantUser int64) error {
	if errors.Is(lookupErr, ErrNotFound) {
		return unauthenticated("invalid API key")
	}
	if lookupErr != nil {
		return apierr.Wrap(lookupErr, "authenticate key")
	}
	switch {
	case k.RevokedAt != nil:
		return unauthenticated("API key has been revoked")
	case k.ExpiresAt != nil && !now.Before(*k.ExpiresAt):
		return unauthenticated("API key has expired")
	case wantUser != 0 && k.UserID != wantUser:
		return unauthenticated("invalid forwarded identity")
	}
	return nil
}

func (s *Service) principal(ctx context.Context, userID, keyID int64, scopes apikey.Scopes, method string) (*server.Principal, error) {
	u, err := s.activeUser(ctx, userID)
	if err != nil {
		return nil, err
	}
	return principalOf(u, keyID, scopes, method), nil
}

// activeUser loads userID for authentication: roles come from the database on every
// request, so a role change takes effect at once.
func (s *Service) activeUser(ctx context.Context, userID int64) (*User, error) {
	u, err := s.store.Get(ctx, userID)
	if errors.Is(err, ErrNotFound) {
		return nil, unauthenticated("unknown user")
	}
	if err != nil {
		return nil, apierr.Wrap(err, "authenticate")
	}
	if !u.IsActive {
		return nil, unauthenticated("user is disabled")
	}
	return u, nil
}

func principalOf(u *User, keyID int64, scopes apikey.Scopes, method string) *server.Principal {
	return &server.Principal{UserID: u.ID, Username: u.Username, Roles: u.Roles, KeyID: keyID, Scopes: scopes, Method: method}
}

// badCredentials is the answer to any failed login: it never says which part was wrong.
func badCredentials() *apierr.Error {
	e := unauthenticated("invalid username or password")
	e.Code = "invalid_credentials"
	return e
}

// Login checks username and password and returns a session token. ip is the client's
// address for the failed-login limit ("" when unknown). Too many failures for username or
// ip answer 429 (rate_limit_exceeded) with Retry-After before any password is checked.
func (s *Service) Login(ctx context.Context, username, password, ip string) (string, error) {
	now := s.now()
	if wait := s.limiter.begin(username, ip, now); wait > 0 {
		s.log.Warn("login refused: too many failed attempts", "client_ip", ip, "retry_after_s", int(wait.Round(time.Second)/time.Second))
		return "", &apierr.Error{Kind: apierr.RateLimited, Message: "too many failed login attempts; try again later", RetryAfter: wait}
	}
	tok, out, err := s.login(ctx, username, password)
	s.limiter.finish(username, ip, s.now(), out)
	if out == loginFailed {
		s.log.Info("login failed", "client_ip", ip)
	}
	return tok, err
}

func (s *Service) login(ctx context.Context, username, password string) (string, loginOutcome, error) {
	cred, err := s.store.Credentials(ctx, username)
	if errors.Is(err, ErrNotFound) {
		// Spend the same time as a real check so that timing does not reveal usernames.
		_ = VerifyPassword(password, s.dummyHash)
		return "", loginFailed, badCredentials()
	}
	if err != nil {
		return "", loginOther, apierr.Wrap(err, "login")
	}
	if err := VerifyPassword(password, cred.PasswordHash); err != nil {
		if errors.Is(err, ErrMismatch) {
			return "", loginFailed, badCredentials()
		}
		return "", loginOther, apierr.Wrap(err, "login %d", cred.ID)
	}
	if !cred.IsActive {
		return "", loginOther, unauthenticated("user is disabled")
	}
	tok, err := s.tokens.Issue(cred.ID, username, cred.SessionVersion)
	if err != nil {
		return "", loginOther, apierr.Wrap(err, "login")
	}
	return tok, loginOK, nil
}

// clientIP is the address the failed-login limit counts: the peer, or the last
// X-Forwarded-For entry when the peer is a trusted proxy (the gateway sets that header).
func (s *Service) clientIP(rc *fasthttp.RequestCtx) string {
	peer, ok := netip.AddrFromSlice(rc.RemoteIP())
	if !ok {
		return ""
	}
	peer = peer.Unmap()
	if xff := rc.Request.Header.Peek("X-Forwarded-For"); len(xff) > 0 && s.trusted(peer) {
		last := string(xff)
		if i := strings.LastIndexByte(last, ','); i >= 0 {
			last = last[i+1:]
		}
		if a, err := netip.ParseAddr(strings.TrimSpace(last)); err == nil {
			return a.Unmap().String()
		}
	}
	return peer.String()
}

func (s *Service) trusted(a netip.Addr) bool {
	for _, p := range s.trustedProxies {
		if p.Contains(a) {
			return true
		}
	}
	return false
}
