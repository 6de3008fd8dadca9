package snapshot

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/maas-platform/maas/pkg/apikey"
)

func TestBuilder(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	b := NewBuilder(now)
	b.AddUser(&User{ID: 1, Username: "alice", Active: true, Roles: []string{"user", "developer"}})
	b.AddUser(&User{ID: 2, Username: "root", Active: true, Roles: []string{"admin"}})
	b.AddUser(&User{ID: 3, Username: "gone", Active: false})
	b.AddKey(apikey.Sum([]byte("k1")), &Key{ID: 10, UserID: 1, Models: []string{"chat-alias"}})
	b.AddKey(apikey.Sum([]byte("k3")), &Key{ID: 30, UserID: 3})
	b.AddModel(&Model{Name: "chat", Enabled: true, MaxOutputTokens: 100})
	b.AddModel(&Model{Name: "secret", Enabled: true, Restricted: true, AllowedRoles: []string{"developer"}})
	b.AddModel(&Model{Name: "private", Enabled: true, Restricted: true, AllowedUsers: []int64{2}})
	b.AddAlias("chat-alias", "chat")
	b.AddAlias("dangling", "nope")
	b.AddBackend(Backend{ID: "b1", Models: []string{"chat-alias", "extra"}})
	s := b.Build()

	var names []string
	for _, m := range s.Models() {
		names = append(names, m.Name)
	}
	if diff := cmp.Diff([]string{"chat", "extra", "private", "secret"}, names); diff != "" {
		t.Errorf("models (-want +got):\n%s", diff)
	}
	chat := s.Model("chat-alias")
	if chat == nil || chat.Name != "chat" || !chat.ServedBy([]string{"chat-alias"}) {
		t.Fatalf("alias resolves to %+v", chat)
	}
	if s.Model("dangling") != nil {
		t.Error("dangling alias resolved")
	}
	if m := s.Model("extra"); m == nil || !m.Implicit || m.MaxOutputTokens != DefaultMaxOutputTokens || m.Restricted {
		t.Errorf("implicit model %+v", m)
	}
	k := s.Key(apikey.Sum([]byte("k1")))
	if k == nil || k.User.Username != "alice" || k.User.RolesCSV != "developer,user" {
		t.Fatalf("key %+v", k)
	}
	if s.Key(apikey.Sum([]byte("k3"))) != nil {
		t.Error("key of an inactive user is usable")
	}
	if !k.AllowsModel(chat, "chat") || !k.AllowsModel(chat, "chat-alias") || k.AllowsModel(s.Model("secret"), "secret") {
		t.Error("key model list")
	}
	alice, root := s.User(1), s.User(2)
	tests := []struct {
		model string
		user  *User
		want  bool
	}{
		{"chat", alice, true},
		{"secret", alice, true},   // by role
		{"private", alice, false}, // not listed
		{"private", root, true},   // by user id, and admin
		{"secret", root, true},    // admin sees everything
	}
	for _, tc := range tests {
		if got := s.Model(tc.model).VisibleTo(tc.user); got != tc.want {
			t.Errorf("%s visible to %s = %v, want %v", tc.model, tc.user.Username, got, tc.want)
		}
	}
	if !(&Key{ExpiresAt: now}).Expired(now) || (&Key{}).Expired(now) {
		t.Error("expiry")
	}
}
