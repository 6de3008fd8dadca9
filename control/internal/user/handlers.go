package user

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/maas-platform/maas/control/internal/server"
	"github.com/maas-platform/maas/pkg/apierr"
	"github.com/maas-platform/maas/pkg/apikey"
)

// Routes adds the user, session, API key and quota endpoints to srv.
func (s *Service) Routes(srv *server.Server) {
	srv.Handle("POST", "/api/v1/auth/login", server.Public, s.handleLogin)
	srv.Handle("GET", "/api/v1/users/me", server.Authenticated, s.handleMe)
	srv.Handle("POST", "/api/v1/users/me/password", server.Authenticated, s.handleChangePassword)

	srv.Handle("POST", "/api/v1/users", server.AdminOnly, s.handleCreateUser)
	srv.Handle("GET", "/api/v1/users", server.AdminOnly, s.handleListUsers)
	srv.Handle("GET", "/api/v1/users/{id}", server.AdminOnly, s.handleGetUser)
	srv.Handle("PATCH", "/api/v1/users/{id}", server.AdminOnly, s.handlePatchUser)
	srv.Handle("DELETE", "/api/v1/users/{id}", server.AdminOnly, s.handleDeleteUser)
	srv.Handle("PUT", "/api/v1/users/{id}/roles", server.AdminOnly, s.handleSetRoles)
	srv.Handle("GET", "/api/v1/users/{id}/quota", server.AdminOnly, s.handleGetQuota)
	srv.Handle("PUT", "/api/v1/users/{id}/quota", server.AdminOnly, s.handlePutQuota)

	srv.Handle("POST", "/api/v1/api-keys", server.Authenticated, s.handleCreateKey)
	srv.Handle("GET", "/api/v1/api-keys", server.Authenticated, s.handleListKeys)
	srv.Handle("GET", "/api/v1/api-keys/{id}", server.Authenticated, s.handleGetKey)
	srv.Handle("DELETE", "/api/v1/api-keys/{id}", server.Authenticated, s.handleRevokeKey)
}

// storeErr maps store errors to API errors.
func storeErr(err error, what string) error {
	var dup *DuplicateError
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ErrNotFound):
		return &apierr.Error{Kind: apierr.NotFound, Message: what + " not found", Err: err}
	case errors.As(err, &dup):
		param := ""
		switch {
		case strings.Contains(dup.Constraint, "username"):
			param = "username"
		case strings.Contains(dup.Constraint, "email"):
			param = "email"
		}
		msg := what + " already exists"
		if param != "" {
			msg = "a user with this " + param + " already exists"
		}
		return &apierr.Error{Kind: apierr.Conflict, Message: msg, Param: param, Err: err}
	}
	return apierr.Wrap(err, "%s", what)
}

var usernameRE = regexp.MustCompile(`^[A-Za-z0-9_.-]{3,64}$`)

func validUsername(u string) error {
	if !usernameRE.MatchString(u) {
		return apierr.Param("username", "username must be 3 to 64 characters of letters, digits, '_', '.' or '-'")
	}
	return nil
}

func validPassword(param, p string) error {
	if len(p) < MinPasswordLen || len(p) > MaxPasswordLen {
		return apierr.Param(param, "%s must have %d to %d characters", param, MinPasswordLen, MaxPasswordLen)
	}
	return nil
}

func validEmail(e string) error {
	at := strings.IndexByte(e, '@')
	if len(e) > 254 || at < 1 || at == len(e)-1 || strings.ContainsAny(e, " \t\r\n") {
		return apierr.Param("email", "email is not a valid address")
	}
	return nil
}

func validFullName(n string) error {
	if utf8.RuneCountInString(n) > 200 {
		return apierr.Param("full_name", "full_name must have at most 200 characters")
	}
	return nil
}

func validKeyName(n string) error {
	if strings.TrimSpace(n) == "" || utf8.RuneCountInString(n) > 100 {
		return apierr.Param("name", "name is required and must have at most 100 characters")
	}
	return nil
}

func (s *Service) validRoles(c *server.Call, roles []string) ([]string, error) {
	if len(roles) == 0 {
		return nil, apierr.Param("roles", "roles must name at least one role (admin, developer, user)")
	}
	known, err := s.store.KnownRoles(c.Ctx, roles)
	if err != nil {
		return nil, apierr.Wrap(err, "roles")
	}
	seen := map[string]bool{}
	var out []string
	for _, r := range roles {
		if !known[r] {
			return nil, apierr.Param("roles", "unknown role %q (use admin, developer or user)", r)
		}
		if !seen[r] {
			seen[r] = true
			out = append(out, r)
		}
	}
	return out, nil
}

// --- sessions ---

type loginRequest struct {
	Username string `json:"username"`
	Password string `json:"password"`
}

type loginResponse struct {
	AccessToken string `json:"access_token"`
	TokenType   string `json:"token_type"`
	ExpiresIn   int    `json:"expires_in"`
}

func (s *Service) handleLogin(c *server.Call) error {
	var req loginRequest
	if err := c.Decode(&req); err != nil {
		return err
	}
	if req.Username == "" {
		return apierr.Param("username", "username is required")
	}
	if req.Password == "" {
		return apierr.Param("password", "password is required")
	}
	if len(req.Password) > MaxPasswordLen {
		return badCredentials()
	}
	tok, err := s.Login(c.Ctx, req.Username, req.Password, s.clientIP(c.RC))
	if err != nil {
		return err
	}
	return c.JSON(200, loginResponse{AccessToken: tok, TokenType: "bearer", ExpiresIn: int(s.tokens.Expire() / time.Second)})
}

func (s *Service) handleMe(c *server.Call) error {
	u, err := s.store.Get(c.Ctx, c.Principal.UserID)
	if err != nil {
		return storeErr(err, "user")
	}
	return c.JSON(200, u)
}

type passwordRequest struct {
	CurrentPassword string `json:"current_password"`
	NewPassword     string `json:"new_password"`
}

func (s *Service) handleChangePassword(c *server.Call) error {
	var req passwordRequest
	if err := c.Decode(&req); err != nil {
		return err
	}
	if req.CurrentPassword == "" {
		return apierr.Param("current_password", "current_password is required")
	}
	if err := validPassword("new_password", req.NewPassword); err != nil {
		return err
	}
	hash, err := s.store.PasswordHash(c.Ctx, c.Principal.UserID)
	if err != nil {
		return storeErr(err, "user")
	}
	if err := VerifyPassword(req.CurrentPassword, hash); err != nil {
		if errors.Is(err, ErrMismatch) {
			return apierr.Param("current_password", "current_password is wrong")
		}
		return apierr.Wrap(err, "change password")
	}
	newHash, err := HashPassword(req.NewPassword, s.hash)
	if err != nil {
		return apierr.Wrap(err, "change password")
	}
	if _, err := s.store.Update(c.Ctx, c.Principal.UserID, Update{PasswordHash: &newHash}); err != nil {
		return storeErr(err, "user")
	}
	s.log.Info("password changed", "user_id", c.Principal.UserID)
	return c.NoContent()
}

// --- users (admin) ---

type createUserRequest struct {
	Username string   `json:"username"`
	Password string   `json:"password"`
	Email    *string  `json:"email"`
	FullName string   `json:"full_name"`
	Roles    []string `json:"roles"`
	IsActive *bool    `json:"is_active"`
}

func (s *Service) handleCreateUser(c *server.Call) error {
	var req createUserRequest
	if err := c.Decode(&req); err != nil {
		return err
	}
	if err := validUsername(req.Username); err != nil {
		return err
	}
	if err := validPassword("password", req.Password); err != nil {
		return err
	}
	if req.Email != nil {
		if err := validEmail(*req.Email); err != nil {
			return err
		}
	}
	if err := validFullName(req.FullName); err != nil {
		return err
	}
	if req.Roles == nil {
		req.Roles = []string{"user"}
	}
	roles, err := s.validRoles(c, req.Roles)
	if err != nil {
		return err
	}
	hash, err := HashPassword(req.Password, s.hash)
	if err != nil {
		return apierr.Wrap(err, "create user")
	}
	active := req.IsActive == nil || *req.IsActive
	u, err := s.store.Create(c.Ctx, NewUser{Username: req.Username, Email: req.Email, FullName: req.FullName, PasswordHash: hash, IsActive: active, Roles: roles})
	if err != nil {
		return storeErr(err, "user")
	}
	s.log.Info("user created", "user_id", u.ID, "by", c.Principal.UserID)
	return c.JSON(201, u)
}

func (s *Service) handleListUsers(c *server.Call) error {
	page, err := c.PageParams()
	if err != nil {
		return err
	}
	after, err := page.IntAfter()
	if err != nil {
		return err
	}
	users, err := s.store.List(c.Ctx, after, page.Limit)
	if err != nil {
		return apierr.Wrap(err, "list users")
	}
	return c.JSON(200, server.NewList(users, page.Limit, func(u *User) any { return u.ID }))
}

func (s *Service) handleGetUser(c *server.Call) error {
	id, err := c.IDParam("id")
	if err != nil {
		return err
	}
	u, err := s.store.Get(c.Ctx, id)
	if err != nil {
		return storeErr(err, "user")
	}
	return c.JSON(200, u)
}

type patchUserRequest struct {
	Email    server.Optional[string] `json:"email"`
	FullName *string                 `json:"full_name"`
	IsActive *bool                   `json:"is_active"`
	Password *string                 `json:"password"`
}

func (s *Service) handlePatchUser(c *server.Call) error {
	id, err := c.IDParam("id")
	if err != nil {
		return err
	}
	var req patchUserRequest
	if err := c.Decode(&req); err != nil {
		return err
	}
	var up Update
	if req.Email.Set {
		if req.Email.Null {
			up.ClearEmail = true
		} else {
			if err := validEmail(req.Email.Value); err != nil {
				return err
			}
			up.Email = &req.Email.Value
		}
	}
	if req.FullName != nil {
		if err := validFullName(*req.FullName); err != nil {
			return err
		}
		up.FullName = req.FullName
	}
	if req.IsActive != nil {
		if !*req.IsActive && id == c.Principal.UserID {
			return apierr.Param("is_active", "you cannot disable your own account")
		}
		up.IsActive = req.IsActive
	}
	if req.Password != nil {
		if err := validPassword("password", *req.Password); err != nil {
			return err
		}
		h, err := HashPassword(*req.Password, s.hash)
		if err != nil {
			return apierr.Wrap(err, "update user")
		}
		up.PasswordHash = &h
	}
	u, err := s.store.Update(c.Ctx, id, up)
	if err != nil {
		return storeErr(err, "user")
	}
	s.log.Info("user updated", "user_id", id, "by", c.Principal.UserID)
	return c.JSON(200, u)
}

func (s *Service) handleDeleteUser(c *server.Call) error {
	id, err := c.IDParam("id")
	if err != nil {
		return err
	}
	if id == c.Principal.UserID {
		return apierr.New(apierr.Conflict, "you cannot delete your own account")
	}
	if err := s.store.Delete(c.Ctx, id); err != nil {
		return storeErr(err, "user")
	}
	s.log.Info("user deleted", "user_id", id, "by", c.Principal.UserID)
	return c.NoContent()
}

type rolesRequest struct {
	Roles []string `json:"roles"`
}

func (s *Service) handleSetRoles(c *server.Call) error {
	id, err := c.IDParam("id")
	if err != nil {
		return err
	}
	var req rolesRequest
	if err := c.Decode(&req); err != nil {
		return err
	}
	roles, err := s.validRoles(c, req.Roles)
	if err != nil {
		return err
	}
	if id == c.Principal.UserID && !containsString(roles, "admin") {
		return apierr.Param("roles", "you cannot remove the admin role from yourself")
	}
	u, err := s.store.SetRoles(c.Ctx, id, roles)
	if err != nil {
		return storeErr(err, "user")
	}
	s.log.Info("user roles set", "user_id", id, "roles", strings.Join(roles, ","), "by", c.Principal.UserID)
	return c.JSON(200, u)
}

func containsString(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// --- quotas (admin) ---

func (s *Service) handleGetQuota(c *server.Call) error {
	id, err := c.IDParam("id")
	if err != nil {
		return err
	}
	q, err := s.store.GetQuota(c.Ctx, id)
	if err != nil {
		return storeErr(err, "user")
	}
	return c.JSON(200, q)
}

type quotaRequest struct {
	RequestsPerMinute  *int64 `json:"requests_per_minute"`
	TokensPerMinute    *int64 `json:"tokens_per_minute"`
	MaxConcurrent      *int64 `json:"max_concurrent"`
	MonthlyTokenBudget *int64 `json:"monthly_token_budget"`
}

func limit32(param string, v *int64) (*int32, error) {
	if v == nil {
		return nil, nil
	}
	if *v < 0 || *v > 1<<31-1 {
		return nil, apierr.Param(param, "%s must be null (unlimited) or an integer from 0 to 2147483647", param)
	}
	n := int32(*v)
	return &n, nil
}

func (s *Service) handlePutQuota(c *server.Call) error {
	id, err := c.IDParam("id")
	if err != nil {
		return err
	}
	var req quotaRequest
	if err := c.Decode(&req); err != nil {
		return err
	}
	q := Quota{UserID: id}
	if q.RequestsPerMinute, err = limit32("requests_per_minute", req.RequestsPerMinute); err != nil {
		return err
	}
	if q.TokensPerMinute, err = limit32("tokens_per_minute", req.TokensPerMinute); err != nil {
		return err
	}
	if q.MaxConcurrent, err = limit32("max_concurrent", req.MaxConcurrent); err != nil {
		return err
	}
	if req.MonthlyTokenBudget != nil && *req.MonthlyTokenBudget < 0 {
		return apierr.Param("monthly_token_budget", "monthly_token_budget must be null (unlimited) or a non-negative integer")
	}
	q.MonthlyTokenBudget = req.MonthlyTokenBudget
	out, err := s.store.PutQuota(c.Ctx, q)
	if errors.Is(err, ErrForeignKey) {
		return storeErr(ErrNotFound, "user")
	}
	if err != nil {
		return storeErr(err, "user")
	}
	s.log.Info("quota set", "user_id", id, "by", c.Principal.UserID)
	return c.JSON(200, out)
}

// --- API keys ---

type createKeyRequest struct {
	Name      string     `json:"name"`
	Models    []string   `json:"models"`
	Scopes    []string   `json:"scopes"` // default ["inference"]; "management" needs the admin role
	ExpiresAt *time.Time `json:"expires_at"`
	RPM       *int64     `json:"rpm"`
	TPM       *int64     `json:"tpm"`
	UserID    *int64     `json:"user_id"` // admin only: create for another user
}

func (s *Service) handleCreateKey(c *server.Call) error {
	var req createKeyRequest
	if err := c.Decode(&req); err != nil {
		return err
	}
	if err := validKeyName(req.Name); err != nil {
		return err
	}
	owner := c.Principal.UserID
	if req.UserID != nil && *req.UserID != owner {
		if !c.Principal.IsAdmin() {
			return apierr.New(apierr.PermissionDenied, "only an admin may create keys for another user")
		}
		owner = *req.UserID
	}
	if req.Models != nil {
		if len(req.Models) == 0 {
			return apierr.Param("models", "models must list at least one model; omit it to allow every model")
		}
		for _, m := range req.Models {
			if m == "" || len(m) > 128 {
				return apierr.Param("models", "models must be non-empty names of at most 128 characters")
			}
		}
	}
	if req.ExpiresAt != nil && !req.ExpiresAt.After(s.now()) {
		return apierr.Param("expires_at", "expires_at must be in the future")
	}
	n := NewKey{UserID: owner, Name: strings.TrimSpace(req.Name), Models: req.Models, ExpiresAt: req.ExpiresAt, Scopes: apikey.DefaultScopes}
	var err error
	if req.Scopes != nil {
		if n.Scopes, err = apikey.ParseScopes(req.Scopes); err != nil {
			return apierr.Param("scopes", "%v", err)
		}
	}
	if n.Scopes.Has(apikey.Management) && !c.Principal.IsAdmin() {
		return &apierr.Error{Kind: apierr.PermissionDenied, Param: "scopes", Message: "only an admin may create a key with the management scope"}
	}
	if n.RPM, err = limit32("rpm", req.RPM); err != nil {
		return err
	}
	if n.TPM, err = limit32("tpm", req.TPM); err != nil {
		return err
	}
	if c.Principal.KeyID != 0 {
		if err := s.narrowToCallerKey(c, &n); err != nil {
			return err
		}
	}
	k, err := s.CreateKey(c.Ctx, n)
	if errors.Is(err, ErrForeignKey) {
		return apierr.Param("user_id", "user %d does not exist", owner)
	}
	if err != nil {
		return storeErr(err, "api key")
	}
	s.log.Info("api key created", "key_id", k.ID, "user_id", owner, "by", c.Principal.UserID)
	return c.JSON(201, k)
}

// narrowToCallerKey applies the rule that no key creates a key with more rights than
// itself, when the caller authenticated with a key: the new key's scopes and models are
// within the caller key's, its limits are not looser and it expires no later. Fields the
// request leaves out are inherited from the caller's key.
func (s *Service) narrowToCallerKey(c *server.Call, n *NewKey) error {
	parent, err := s.store.GetKey(c.Ctx, c.Principal.KeyID)
	if err != nil {
		return storeErr(err, "api key")
	}
	deny := func(param, format string, args ...any) error {
		return &apierr.Error{Kind: apierr.PermissionDenied, Param: param,
			Message: "a key cannot create a key with more rights than itself: " + fmt.Sprintf(format, args...)}
	}
	if have := apikey.ScopesOf(parent.Scopes); !n.Scopes.Within(have) {
		return deny("scopes", "scopes %q are not within this key's %q", n.Scopes.Names(), have.Names())
	}
	if parent.Models != nil {
		if n.Models == nil {
			n.Models = parent.Models
		}
		for _, m := range n.Models {
			if !containsString(parent.Models, m) {
				return deny("models", "model %q is not in this key's models", m)
			}
		}
	}
	for _, l := range []struct {
		param  string
		parent *int32
		child  **int32
	}{{"rpm", parent.RPM, &n.RPM}, {"tpm", parent.TPM, &n.TPM}} {
		if l.parent == nil || *l.parent == 0 { // no limit
			continue
		}
		if *l.child == nil {
			*l.child = l.parent
			continue
		}
		if v := **l.child; v == 0 || v > *l.parent {
			return deny(l.param, "%s must be from 1 to this key's %d", l.param, *l.parent)
		}
	}
	if parent.ExpiresAt != nil {
		if n.ExpiresAt == nil {
			n.ExpiresAt = parent.ExpiresAt
		} else if n.ExpiresAt.After(*parent.ExpiresAt) {
			return deny("expires_at", "expires_at must not be later than this key's (%s)", parent.ExpiresAt.UTC().Format(time.RFC3339))
		}
	}
	return nil
}

func (s *Service) handleListKeys(c *server.Call) error {
	page, err := c.PageParams()
	if err != nil {
		return err
	}
	after, err := page.IntAfter()
	if err != nil {
		return err
	}
	userID, filtered, err := c.QueryInt("user_id")
	if err != nil {
		return err
	}
	if !c.Principal.IsAdmin() {
		if filtered && userID != c.Principal.UserID {
			return apierr.New(apierr.PermissionDenied, "only an admin may list other users' keys")
		}
		userID = c.Principal.UserID
	}
	keys, err := s.store.ListKeys(c.Ctx, userID, after, page.Limit)
	if err != nil {
		return apierr.Wrap(err, "list keys")
	}
	return c.JSON(200, server.NewList(keys, page.Limit, func(k *Key) any { return k.ID }))
}

// ownKey loads key id when the caller may see it; others' keys are 404 to non-admins.
func (s *Service) ownKey(c *server.Call) (*Key, error) {
	id, err := c.IDParam("id")
	if err != nil {
		return nil, err
	}
	k, err := s.store.GetKey(c.Ctx, id)
	if err != nil {
		return nil, storeErr(err, "api key")
	}
	if k.UserID != c.Principal.UserID && !c.Principal.IsAdmin() {
		return nil, apierr.New(apierr.NotFound, "api key not found")
	}
	return k, nil
}

func (s *Service) handleGetKey(c *server.Call) error {
	k, err := s.ownKey(c)
	if err != nil {
		return err
	}
	return c.JSON(200, k)
}

func (s *Service) handleRevokeKey(c *server.Call) error {
	k, err := s.ownKey(c)
	if err != nil {
		return err
	}
	if err := s.store.RevokeKey(c.Ctx, k.ID); err != nil {
		return storeErr(err, "api key")
	}
	s.log.Info("api key revoked", "key_id", k.ID, "user_id", k.UserID, "by", c.Principal.UserID)
	return c.NoContent()
}
