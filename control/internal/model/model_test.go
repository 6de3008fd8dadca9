package model

import (
	"testing"

	"github.com/maas-platform/maas/pkg/apierr"
)

func TestVisibleTo(t *testing.T) {
	public := &Model{Visibility: "public", Enabled: true}
	restricted := &Model{Visibility: "restricted", Enabled: true, AllowedRoles: []string{"developer"}, AllowedUsers: []int64{7}}
	disabled := &Model{Visibility: "public", Enabled: false}
	tests := []struct {
		name  string
		m     *Model
		user  int64
		roles []string
		admin bool
		want  bool
	}{
		{"public to user", public, 1, []string{"user"}, false, true},
		{"restricted to user", restricted, 1, []string{"user"}, false, false},
		{"restricted to allowed role", restricted, 1, []string{"user", "developer"}, false, true},
		{"restricted to allowed user", restricted, 7, []string{"user"}, false, true},
		{"restricted to admin", restricted, 1, []string{"admin"}, true, true},
		{"disabled to user", disabled, 1, []string{"user"}, false, false},
		{"disabled to admin", disabled, 1, []string{"admin"}, true, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.m.VisibleTo(tt.user, tt.roles, tt.admin); got != tt.want {
				t.Errorf("VisibleTo = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	ok := func() *Model {
		return &Model{Name: "org/m-1", Type: "chat", Visibility: "public", RoutingPolicy: "least_outstanding", ContextWindow: 1, MaxOutputTokens: 1}
	}
	tests := []struct {
		name  string
		edit  func(*Model)
		param string // "" = valid
	}{
		{"valid", func(*Model) {}, ""},
		{"bad name", func(m *Model) { m.Name = "/x" }, "name"},
		{"bad type", func(m *Model) { m.Type = "audio" }, "type"},
		{"alias equals name", func(m *Model) { m.Aliases = []string{"org/m-1"} }, "aliases"},
		{"repeated alias", func(m *Model) { m.Aliases = []string{"a", "a"} }, "aliases"},
		{"bad alias", func(m *Model) { m.Aliases = []string{"a b"} }, "aliases"},
		{"price too high", func(m *Model) { m.OutputPricePerMillion = 1e7 }, "output_price_per_million"},
		{"bad visibility", func(m *Model) { m.Visibility = "hidden" }, "visibility"},
		{"bad policy", func(m *Model) { m.RoutingPolicy = "round_robin" }, "routing_policy"},
		{"bad user id", func(m *Model) { m.AllowedUsers = []int64{0} }, "allowed_users"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := ok()
			tt.edit(m)
			err := validate(m)
			if tt.param == "" {
				if err != nil {
					t.Fatalf("validate: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("validate accepted it")
			}
			if e := apierr.From(err); e.Param != tt.param || e.Kind != apierr.InvalidRequest {
				t.Errorf("error %v param %q, want %q", e.Kind, e.Param, tt.param)
			}
		})
	}
}
