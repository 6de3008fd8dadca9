package snapshot

import (
	"slices"
	"sort"
	"time"

	"github.com/maas-platform/maas/pkg/apikey"
)

// Routing policies of a model.
const (
	PolicyLeastOutstanding = "least_outstanding"
	PolicyPrefixAffinity   = "prefix_affinity"
	PolicyWeightedRandom   = "weighted_random"
)

// DefaultMaxOutputTokens is the output cap assumed for a model that a backend serves but
// the model registry does not list.
const DefaultMaxOutputTokens = 1024

// Quota is a user's limits; a zero field means unlimited.
type Quota struct {
	RequestsPerMinute  int
	TokensPerMinute    int
	MaxConcurrent      int
	MonthlyTokenBudget int64
}

// User is an account with its roles and quota.
type User struct {
	ID       int64
	Username string
	Active   bool
	Roles    []string // sorted
	RolesCSV string   // Roles joined by commas, for forwarded identity headers
	Admin    bool
	Quota    Quota
}

// HasRole reports whether u has role r.
func (u *User) HasRole(r string) bool {
	_, ok := slices.BinarySearch(u.Roles, r)
	return ok
}

// Key is an API key that is not revoked. Expiry is checked at use.
type Key struct {
	ID     int64
	UserID int64
	User   *User    // never nil in a Snapshot
	Models []string // nil: every model the user may use
	// RequestsPerMinute and TokensPerMinute are the key's own limits; zero is unlimited.
	RequestsPerMinute int
	TokensPerMinute   int
	ExpiresAt         time.Time // zero: never
	// Scopes are the endpoint families the key may call (apikey.ScopeFor).
	Scopes apikey.Scopes
}

// Expired reports whether k has expired at now.
func (k *Key) Expired(now time.Time) bool {
	return !k.ExpiresAt.IsZero() && !now.Before(k.ExpiresAt)
}

// AllowsModel reports whether k's model list permits m (asked for by the name requested,
// which may be an alias). A list naming any of a model's names permits the model.
func (k *Key) AllowsModel(m *Model, requested string) bool {
	if k.Models == nil {
		return true
	}
	for _, n := range k.Models {
		if n == m.Name || n == requested || slices.Contains(m.Aliases, n) {
			return true
		}
	}
	return false
}

// Model is a served model as the registry describes it.
type Model struct {
	ID              int64
	Name            string
	Type            string // chat, completion, embedding; "" when not in the registry
	ContextWindow   int
	MaxOutputTokens int
	Restricted      bool
	AllowedRoles    []string
	AllowedUsers    []int64
	Policy          string
	Enabled         bool
	// Implicit is true for a model that some backend serves but the registry does not list;
	// it is public, with default limits.
	Implicit bool
	Created  int64    // unix seconds
	Aliases  []string // other names of the model; backends may advertise any of them
	// BaseModel names the base of a LoRA adapter (models.base_model); "" for any other
	// model. An adapter loaded on no backend is loaded on demand (proxy).
	BaseModel string
}

// ServedBy reports whether a backend advertising names serves m.
func (m *Model) ServedBy(names []string) bool {
	for _, n := range names {
		if n == m.Name || slices.Contains(m.Aliases, n) {
			return true
		}
	}
	return false
}

// VisibleTo reports whether u may use m. Admins see every model.
func (m *Model) VisibleTo(u *User) bool {
	if !m.Restricted || u.Admin {
		return true
	}
	for _, r := range m.AllowedRoles {
		if u.HasRole(r) {
			return true
		}
	}
	return slices.Contains(m.AllowedUsers, u.ID)
}

// Backend is a registered inference engine.
type Backend struct {
	ID                string
	URL               string
	EngineKind        string
	Models            []string
	Capacity          int
	Weight            int
	State             string
	Disabled          bool
	HeartbeatInterval time.Duration
	Load              Load
}

// Load is the part of a backend's row that changes with every heartbeat.
type Load struct {
	ID       string
	State    string
	Disabled bool
	Running  int
	Waiting  int
	KVCache  float64
	// HeartbeatAge is how long ago the last heartbeat arrived, measured by PostgreSQL's
	// clock when the row was read (so gateway clock skew does not matter).
	HeartbeatAge time.Duration
	// ReadAt is the gateway's clock when the row was read.
	ReadAt time.Time
}

// Snapshot is one consistent view of the tables. It is immutable: safe for concurrent use.
type Snapshot struct {
	keys     map[apikey.Hash]*Key
	users    map[int64]*User
	models   map[string]*Model // by name and by alias
	list     []*Model          // canonical models sorted by name
	Backends []Backend
	LoadedAt time.Time
}

// Key returns the key with hash h, or nil.
func (s *Snapshot) Key(h apikey.Hash) *Key { return s.keys[h] }

// User returns the user with id, or nil.
func (s *Snapshot) User(id int64) *User { return s.users[id] }

// Model resolves a model name or alias, or returns nil.
func (s *Snapshot) Model(name string) *Model { return s.models[name] }

// Models returns the canonical models sorted by name (do not modify).
func (s *Snapshot) Models() []*Model { return s.list }

// Counts reports the sizes of s, for logs.
func (s *Snapshot) Counts() (keys, users, models, backends int) {
	return len(s.keys), len(s.users), len(s.list), len(s.Backends)
}

// Builder assembles a Snapshot (used by the loader and by tests).
type Builder struct {
	s       *Snapshot
	aliases map[string]string
}

// NewBuilder starts an empty snapshot loaded at now.
func NewBuilder(now time.Time) *Builder {
	return &Builder{s: &Snapshot{
		keys:     map[apikey.Hash]*Key{},
		users:    map[int64]*User{},
		models:   map[string]*Model{},
		LoadedAt: now,
	}, aliases: map[string]string{}}
}

// AddUser adds u (its roles are sorted here).
func (b *Builder) AddUser(u *User) {
	sort.Strings(u.Roles)
	u.RolesCSV = joinComma(u.Roles)
	u.Admin = u.HasRole("admin")
	b.s.users[u.ID] = u
}

// AddKey adds k under hash h; keys whose user is unknown or inactive are left out. A key
// without scopes gets apikey.DefaultScopes (stored keys always have at least one).
func (b *Builder) AddKey(h apikey.Hash, k *Key) {
	u := b.s.users[k.UserID]
	if u == nil || !u.Active {
		return
	}
	if k.Scopes == 0 {
		k.Scopes = apikey.DefaultScopes
	}
	k.User = u
	b.s.keys[h] = k
}

// AddModel adds a registry model.
func (b *Builder) AddModel(m *Model) {
	if m.Policy == "" {
		m.Policy = PolicyLeastOutstanding
	}
	b.s.models[m.Name] = m
}

// AddAlias makes alias resolve to the model named target.
func (b *Builder) AddAlias(alias, target string) { b.aliases[alias] = target }

// AddBackend adds a backend.
func (b *Builder) AddBackend(be Backend) { b.s.Backends = append(b.s.Backends, be) }

// Build finishes the snapshot: aliases are resolved and models served by a backend but
// absent from the registry are added as implicit public models.
func (b *Builder) Build() *Snapshot {
	s := b.s
	for _, m := range s.models {
		s.list = append(s.list, m)
	}
	for _, be := range s.Backends {
		for _, name := range be.Models {
			if _, ok := s.models[name]; ok {
				continue
			}
			if _, ok := b.aliases[name]; ok {
				continue
			}
			m := &Model{Name: name, MaxOutputTokens: DefaultMaxOutputTokens, Policy: PolicyLeastOutstanding,
				Enabled: true, Implicit: true, Created: s.LoadedAt.Unix()}
			s.models[name] = m
			s.list = append(s.list, m)
		}
	}
	for alias, target := range b.aliases {
		if m, ok := s.models[target]; ok {
			if _, taken := s.models[alias]; !taken {
				s.models[alias] = m
				m.Aliases = append(m.Aliases, alias)
			}
		}
	}
	sort.Slice(s.list, func(i, j int) bool { return s.list[i].Name < s.list[j].Name })
	return s
}

func joinComma(xs []string) string {
	n := 0
	for _, x := range xs {
		n += len(x) + 1
	}
	out := make([]byte, 0, n)
	for i, x := range xs {
		if i > 0 {
			out = append(out, ',')
		}
		out = append(out, x...)
	}
	return string(out)
}
