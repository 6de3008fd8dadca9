package model

import (
	"errors"
	"fmt"
	"math"
	"regexp"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/maas-platform/maas/control/internal/server"
	"github.com/maas-platform/maas/pkg/apierr"
)

// Routes adds the model endpoints to srv. Model names may contain '/', so the name is
// the rest of the path.
func (s *Service) Routes(srv *server.Server) {
	srv.Handle("POST", "/api/v1/models", server.AdminOnly, s.handleCreate)
	srv.Handle("GET", "/api/v1/models", server.Authenticated, s.handleList)
	srv.Handle("GET", "/api/v1/models/{name:*}", server.Authenticated, s.handleGet)
	srv.Handle("PATCH", "/api/v1/models/{name:*}", server.AdminOnly, s.handlePatch)
	srv.Handle("DELETE", "/api/v1/models/{name:*}", server.AdminOnly, s.handleDelete)
}

// fields is the body of POST (name and type required) and PATCH (name immutable).
type fields struct {
	Name                  *string   `json:"name"`
	Type                  *string   `json:"type"`
	Description           *string   `json:"description"`
	Aliases               *[]string `json:"aliases"`
	ContextWindow         *int64    `json:"context_window"`
	MaxOutputTokens       *int64    `json:"max_output_tokens"`
	InputPricePerMillion  *float64  `json:"input_price_per_million"`
	OutputPricePerMillion *float64  `json:"output_price_per_million"`
	Visibility            *string   `json:"visibility"`
	AllowedRoles          *[]string `json:"allowed_roles"`
	AllowedUsers          *[]int64  `json:"allowed_users"`
	RoutingPolicy         *string   `json:"routing_policy"`
	Enabled               *bool     `json:"enabled"`
}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,127}$`)

const nameRule = "1 to 128 characters: letters, digits, '_', '.', ':', '/', '-', starting with a letter or digit"

func (f *fields) apply(m *Model) error {
	if f.Type != nil {
		m.Type = *f.Type
	}
	if f.Description != nil {
		m.Description = *f.Description
	}
	if f.Aliases != nil {
		m.Aliases = *f.Aliases
	}
	for _, v := range []struct {
		param string
		in    *int64
		out   *int32
	}{{"context_window", f.ContextWindow, &m.ContextWindow}, {"max_output_tokens", f.MaxOutputTokens, &m.MaxOutputTokens}} {
		if v.in == nil {
			continue
		}
		if *v.in < 1 || *v.in > math.MaxInt32 {
			return apierr.Param(v.param, "%s must be a positive integer", v.param)
		}
		*v.out = int32(*v.in)
	}
	if f.InputPricePerMillion != nil {
		m.InputPricePerMillion = *f.InputPricePerMillion
	}
	if f.OutputPricePerMillion != nil {
		m.OutputPricePerMillion = *f.OutputPricePerMillion
	}
	if f.Visibility != nil {
		m.Visibility = *f.Visibility
	}
	if f.AllowedRoles != nil {
		m.AllowedRoles = *f.AllowedRoles
	}
	if f.AllowedUsers != nil {
		m.AllowedUsers = *f.AllowedUsers
	}
	if f.RoutingPolicy != nil {
		m.RoutingPolicy = *f.RoutingPolicy
	}
	if f.Enabled != nil {
		m.Enabled = *f.Enabled
	}
	return nil
}

func validate(m *Model) error {
	if !nameRE.MatchString(m.Name) {
		return apierr.Param("name", "name must be %s", nameRule)
	}
	if !slices.Contains(Types, m.Type) {
		return apierr.Param("type", "type must be one of %s", strings.Join(Types, ", "))
	}
	if utf8.RuneCountInString(m.Description) > 2000 {
		return apierr.Param("description", "description must have at most 2000 characters")
	}
	seen := map[string]bool{m.Name: true}
	for _, a := range m.Aliases {
		if !nameRE.MatchString(a) {
			return apierr.Param("aliases", "alias %q is invalid: aliases must be %s", a, nameRule)
		}
		if seen[a] {
			return apierr.Param("aliases", "alias %q is repeated or equals the model's name", a)
		}
		seen[a] = true
	}
	if len(m.Aliases) > 32 {
		return apierr.Param("aliases", "at most 32 aliases")
	}
	for _, p := range []struct {
		param string
		v     float64
	}{{"input_price_per_million", m.InputPricePerMillion}, {"output_price_per_million", m.OutputPricePerMillion}} {
		if math.IsNaN(p.v) || p.v < 0 || p.v >= 1e6 {
			return apierr.Param(p.param, "%s must be a number from 0 to 999999.999999", p.param)
		}
	}
	if !slices.Contains(Visibilities, m.Visibility) {
		return apierr.Param("visibility", "visibility must be public or restricted")
	}
	if !slices.Contains(RoutingPolicies, m.RoutingPolicy) {
		return apierr.Param("routing_policy", "routing_policy must be one of %s", strings.Join(RoutingPolicies, ", "))
	}
	for _, u := range m.AllowedUsers {
		if u <= 0 {
			return apierr.Param("allowed_users", "allowed_users must be user ids")
		}
	}
	return nil
}

// checkRefs verifies that allowed_roles and allowed_users name existing roles and users.
func (s *Service) checkRefs(c *server.Call, m *Model) error {
	if len(m.AllowedRoles) > 0 {
		var n int
		if err := s.db.QueryRow(c.Ctx, `SELECT count(*) FROM roles WHERE name = ANY($1)`, m.AllowedRoles).Scan(&n); err != nil {
			return apierr.Wrap(err, "check roles")
		}
		if n != len(uniq(m.AllowedRoles)) {
			return apierr.Param("allowed_roles", "allowed_roles must name existing roles (admin, developer, user)")
		}
	}
	if len(m.AllowedUsers) > 0 {
		var n int
		if err := s.db.QueryRow(c.Ctx, `SELECT count(*) FROM users WHERE id = ANY($1)`, m.AllowedUsers).Scan(&n); err != nil {
			return apierr.Wrap(err, "check users")
		}
		if n != len(uniq(m.AllowedUsers)) {
			return apierr.Param("allowed_users", "allowed_users must name existing user ids")
		}
	}
	m.AllowedRoles = uniq(m.AllowedRoles)
	m.AllowedUsers = uniq(m.AllowedUsers)
	return nil
}

func uniq[T comparable](in []T) []T {
	out := []T{}
	seen := map[T]bool{}
	for _, v := range in {
		if !seen[v] {
			seen[v] = true
			out = append(out, v)
		}
	}
	return out
}

func storeErr(err error, name string) error {
	switch {
	case errors.Is(err, ErrNotFound):
		return &apierr.Error{Kind: apierr.NotFound, Message: fmt.Sprintf("model %q not found", name), Code: "model_not_found", Err: err}
	case errors.Is(err, ErrNameTaken):
		return &apierr.Error{Kind: apierr.Conflict, Message: "a model or alias with this name already exists", Param: "name", Err: err}
	}
	return apierr.Wrap(err, "model %q", name)
}

func (s *Service) handleCreate(c *server.Call) error {
	var f fields
	if err := c.Decode(&f); err != nil {
		return err
	}
	if f.Name == nil {
		return apierr.Param("name", "name is required")
	}
	if f.Type == nil {
		return apierr.Param("type", "type is required (%s)", strings.Join(Types, ", "))
	}
	m := &Model{Name: *f.Name, ContextWindow: 8192, MaxOutputTokens: 1024, Visibility: defaultVisiblity,
		RoutingPolicy: defaultRouting, Enabled: true, Aliases: []string{}, AllowedRoles: []string{}, AllowedUsers: []int64{}}
	if err := f.apply(m); err != nil {
		return err
	}
	if err := validate(m); err != nil {
		return err
	}
	if err := s.checkRefs(c, m); err != nil {
		return err
	}
	out, err := s.Create(c.Ctx, m)
	if err != nil {
		return storeErr(err, m.Name)
	}
	s.log.Info("model created", "model", out.Name, "by", c.Principal.UserID)
	return c.JSON(201, out)
}

func viewer(c *server.Call) Viewer {
	return Viewer{UserID: c.Principal.UserID, Roles: c.Principal.Roles, Admin: c.Principal.IsAdmin()}
}

func (s *Service) handleList(c *server.Call) error {
	page, err := c.PageParams()
	if err != nil {
		return err
	}
	after, err := page.IntAfter()
	if err != nil {
		return err
	}
	models, err := s.List(c.Ctx, viewer(c), after, page.Limit)
	if err != nil {
		return apierr.Wrap(err, "list models")
	}
	return c.JSON(200, server.NewList(models, page.Limit, func(m *Model) any { return m.ID }))
}

// visible loads the model named in the path if the caller may see it (404 otherwise, so
// that restricted models are not revealed).
func (s *Service) visible(c *server.Call) (*Model, string, error) {
	name := c.Param("name")
	m, err := s.Get(c.Ctx, name)
	if err != nil {
		return nil, name, storeErr(err, name)
	}
	v := viewer(c)
	if !m.VisibleTo(v.UserID, v.Roles, v.Admin) {
		return nil, name, storeErr(ErrNotFound, name)
	}
	return m, name, nil
}

func (s *Service) handleGet(c *server.Call) error {
	m, _, err := s.visible(c)
	if err != nil {
		return err
	}
	return c.JSON(200, m)
}

// canonical is visible, but only by the model's own name: changing or deleting a model
// through one of its aliases is refused.
func (s *Service) canonical(c *server.Call) (*Model, string, error) {
	m, name, err := s.visible(c)
	if err != nil {
		return nil, name, err
	}
	if m.Name != name {
		return nil, name, &apierr.Error{Kind: apierr.NotFound, Code: "model_not_found",
			Message: fmt.Sprintf("%q is an alias of %q; change or delete the model by its name", name, m.Name)}
	}
	return m, name, nil
}

func (s *Service) handlePatch(c *server.Call) error {
	m, name, err := s.canonical(c)
	if err != nil {
		return err
	}
	var f fields
	if err := c.Decode(&f); err != nil {
		return err
	}
	if f.Name != nil && *f.Name != m.Name {
		return apierr.Param("name", "a model cannot be renamed; add an alias instead")
	}
	if err := f.apply(m); err != nil {
		return err
	}
	if err := validate(m); err != nil {
		return err
	}
	if err := s.checkRefs(c, m); err != nil {
		return err
	}
	out, err := s.Replace(c.Ctx, m)
	if err != nil {
		return storeErr(err, name)
	}
	s.log.Info("model updated", "model", out.Name, "by", c.Principal.UserID)
	return c.JSON(200, out)
}

func (s *Service) handleDelete(c *server.Call) error {
	m, name, err := s.canonical(c)
	if err != nil {
		return err
	}
	if err := s.Delete(c.Ctx, m.ID); err != nil {
		return storeErr(err, name)
	}
	s.log.Info("model deleted", "model", m.Name, "by", c.Principal.UserID)
	return c.NoContent()
}
