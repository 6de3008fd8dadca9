package snapshot

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/maas-platform/maas/pkg/apikey"
	"github.com/maas-platform/maas/pkg/pgdb/pgtest"
)

// countingDB counts the look-ups that reach PostgreSQL (ReadKey runs two statements).
type countingDB struct {
	q       rowQuerier
	queries atomic.Int64
}

func (c *countingDB) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	c.queries.Add(1)
	return c.q.Query(ctx, sql, args...)
}

func (c *countingDB) lookups() int64 { return c.queries.Load() / 2 }

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// lookupStore returns a Store on pool whose first snapshot is loaded and whose loops do not
// run (no reload happens unless the test asks), with look-ups counted.
func lookupStore(t *testing.T, pool *pgxpool.Pool, tweak func(*Options)) (*Store, *countingDB) {
	t.Helper()
	o := DefaultOptions()
	o.Pool = pool
	o.Registerer = prometheus.NewRegistry()
	if tweak != nil {
		tweak(&o)
	}
	s, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.ReloadNow(context.Background()); err != nil {
		t.Fatal(err)
	}
	db := &countingDB{q: pool}
	s.keys.db = db
	return s, db
}

// newKey inserts a key for user uid directly (as control does) and returns its secret.
func newKey(t *testing.T, pool *pgxpool.Pool, uid int64, extra string) (string, int64) {
	t.Helper()
	secret, err := apikey.Generate()
	if err != nil {
		t.Fatal(err)
	}
	h := apikey.Sum([]byte(secret))
	var id int64
	if err := pool.QueryRow(context.Background(), `INSERT INTO api_keys (user_id, name, prefix, key_hash, scopes, expires_at)
		VALUES ($1, 'k', 'sk-', $2, '{inference,management}', `+extra+`) RETURNING id`, uid, h[:]).Scan(&id); err != nil {
		t.Fatal(err)
	}
	return secret, id
}

func newUser(t *testing.T, pool *pgxpool.Pool, name string) int64 {
	t.Helper()
	var uid int64
	if err := pool.QueryRow(context.Background(), `INSERT INTO users (username, password_hash) VALUES ($1, 'x') RETURNING id`, name).Scan(&uid); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(context.Background(), `INSERT INTO user_roles (user_id, role_id) SELECT $1, id FROM roles WHERE name = 'admin'`, uid); err != nil {
		t.Fatal(err)
	}
	return uid
}

func TestFindKeyReadsKeysTheSnapshotLacks(t *testing.T) {
	pool, _ := pgtest.NewPool(t)
	s, db := lookupStore(t, pool, nil)
	// The user is created after the snapshot too, like a key and user made together.
	uid := newUser(t, pool, "late")
	secret, id := newKey(t, pool, uid, "NULL")
	h := apikey.Sum([]byte(secret))
	if s.Current().Key(h) != nil {
		t.Fatal("the snapshot already has the key")
	}
	k, err := s.FindKey(context.Background(), h)
	if err != nil || k == nil {
		t.Fatalf("FindKey: %v %v", k, err)
	}
	if k.ID != id || k.User == nil || k.User.ID != uid || !k.User.Admin || k.Scopes != apikey.AllScopes {
		t.Errorf("found key %+v (user %+v)", k, k.User)
	}
	// Found keys are kept beside the snapshot: no second query.
	for range 5 {
		if k2, _ := s.FindKey(context.Background(), h); k2 != k {
			t.Fatal("found key not kept")
		}
	}
	if n := db.lookups(); n != 1 {
		t.Errorf("%d look-ups, want 1", n)
	}
	// A snapshot read afterwards has it; the copy beside the old one is dropped.
	if err := s.ReloadNow(context.Background()); err != nil {
		t.Fatal(err)
	}
	if s.Current().Key(h) == nil {
		t.Fatal("reloaded snapshot lacks the key")
	}
	s.keys.mu.Lock()
	kept := len(s.keys.found)
	s.keys.mu.Unlock()
	if kept != 0 {
		t.Errorf("%d found keys kept after a newer snapshot", kept)
	}
}

func TestFindKeyAppliesTheLoaderRules(t *testing.T) {
	pool, _ := pgtest.NewPool(t)
	s, _ := lookupStore(t, pool, nil)
	uid := newUser(t, pool, "rules")
	revoked, rid := newKey(t, pool, uid, "NULL")
	if _, err := pool.Exec(context.Background(), `UPDATE api_keys SET revoked_at = now() WHERE id = $1`, rid); err != nil {
		t.Fatal(err)
	}
	expired, _ := newKey(t, pool, uid, "now() - interval '1 second'")
	inactiveUser := newUser(t, pool, "inactive")
	ofInactive, _ := newKey(t, pool, inactiveUser, "NULL")
	if _, err := pool.Exec(context.Background(), `UPDATE users SET is_active = false WHERE id = $1`, inactiveUser); err != nil {
		t.Fatal(err)
	}
	for name, secret := range map[string]string{"revoked": revoked, "expired": expired, "inactive user": ofInactive, "unknown": "sk-" + secret43()} {
		if k, err := s.FindKey(context.Background(), apikey.Sum([]byte(secret))); k != nil || err != nil {
			t.Errorf("%s key: found %+v, %v", name, k, err)
		}
	}

	// A key found, then revoked: the snapshot the revocation's NOTIFY triggers (read after
	// the look-up) removes it from beside the snapshot too.
	secret, id := newKey(t, pool, uid, "NULL")
	h := apikey.Sum([]byte(secret))
	if k, _ := s.FindKey(context.Background(), h); k == nil {
		t.Fatal("new key not found")
	}
	if _, err := pool.Exec(context.Background(), `UPDATE api_keys SET revoked_at = now() WHERE id = $1`, id); err != nil {
		t.Fatal(err)
	}
	if err := s.ReloadNow(context.Background()); err != nil {
		t.Fatal(err)
	}
	if k, _ := s.FindKey(context.Background(), h); k != nil {
		t.Error("revoked key still found after the next snapshot")
	}
}

func secret43() string {
	s, _ := apikey.Generate()
	return s[3:]
}

func TestFindKeyNegativeCache(t *testing.T) {
	pool, _ := pgtest.NewPool(t)
	clock := &fakeClock{t: time.Now()}
	s, db := lookupStore(t, pool, func(o *Options) { o.Now = clock.Now; o.KeyLookupBurst = 100 })
	h := apikey.Sum([]byte("sk-" + secret43()))
	for range 10 {
		if k, err := s.FindKey(context.Background(), h); k != nil || err != nil {
			t.Fatalf("unknown key: %v %v", k, err)
		}
	}
	if n := db.lookups(); n != 1 {
		t.Fatalf("%d look-ups of one unknown key within the negative TTL, want 1", n)
	}
	if got := testutil.ToFloat64(s.keys.results.WithLabelValues("cached_not_found")); got != 9 {
		t.Errorf("cached_not_found = %v, want 9", got)
	}
	clock.Add(DefaultOptions().KeyNegativeTTL)
	_, _ = s.FindKey(context.Background(), h)
	if n := db.lookups(); n != 2 {
		t.Fatalf("%d look-ups after the negative TTL, want 2", n)
	}
}

func TestFindKeySingleFlight(t *testing.T) {
	pool, _ := pgtest.NewPool(t)
	s, db := lookupStore(t, pool, nil)
	uid := newUser(t, pool, "flight")
	secret, _ := newKey(t, pool, uid, "NULL")
	h := apikey.Sum([]byte(secret))
	var wg sync.WaitGroup
	var missing atomic.Int64
	for range 50 {
		wg.Go(func() {
			if k, _ := s.FindKey(context.Background(), h); k == nil {
				missing.Add(1)
			}
		})
	}
	wg.Wait()
	if missing.Load() != 0 || db.lookups() != 1 {
		t.Errorf("50 concurrent uses of one new key: %d refused, %d look-ups; want 0 and 1", missing.Load(), db.lookups())
	}
}

// A flood of random keys reaches PostgreSQL at most at the rate limit.
func TestFindKeyRateLimitsAFlood(t *testing.T) {
	pool, _ := pgtest.NewPool(t)
	const rate, burst = 50, 10
	s, db := lookupStore(t, pool, func(o *Options) { o.KeyLookupRate, o.KeyLookupBurst = rate, burst })
	start := time.Now()
	stop := start.Add(time.Second)
	var wg sync.WaitGroup
	var calls, limited atomic.Int64
	for range 16 {
		wg.Go(func() {
			for time.Now().Before(stop) {
				_, err := s.FindKey(context.Background(), apikey.Sum([]byte("sk-"+secret43())))
				calls.Add(1)
				if errors.Is(err, ErrLookupLimited) {
					limited.Add(1)
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	allowed := int64(burst + rate*elapsed.Seconds() + 1)
	t.Logf("%d calls in %v: %d look-ups reached PostgreSQL (bound %d), %d refused by the limit", calls.Load(), elapsed, db.lookups(), allowed, limited.Load())
	if db.lookups() > allowed {
		t.Errorf("%d look-ups reached PostgreSQL, bound %d", db.lookups(), allowed)
	}
	if limited.Load() == 0 || calls.Load() < 2*allowed {
		t.Errorf("the flood was too small to test the limit: %d calls, %d limited", calls.Load(), limited.Load())
	}
}

// With PostgreSQL unreachable a look-up fails within KeyLookupTimeout, as an unknown key:
// here a server that accepts connections and never answers (the worst case: no quick
// "connection refused").
func TestFindKeyDatabaseDown(t *testing.T) {
	pool, _ := pgtest.NewPool(t)
	s, _ := lookupStore(t, pool, nil)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var held []net.Conn
	var mu sync.Mutex
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range held {
			c.Close()
		}
		mu.Unlock()
	})
	hung, err := pgxpool.New(context.Background(), "postgresql://u@"+ln.Addr().String()+"/db?sslmode=disable")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(hung.Close)
	s.keys.db = hung
	for i := range 2 {
		start := time.Now()
		k, err := s.FindKey(context.Background(), apikey.Sum([]byte("sk-"+secret43())))
		if k != nil || err == nil {
			t.Fatalf("look-up against a hung server: %v %v", k, err)
		}
		if d := time.Since(start); d > DefaultOptions().KeyLookupTimeout+500*time.Millisecond {
			t.Errorf("look-up %d took %v, want about KeyLookupTimeout (%v)", i, d, DefaultOptions().KeyLookupTimeout)
		}
	}
	if got := testutil.ToFloat64(s.keys.results.WithLabelValues("error")); got != 2 {
		t.Errorf("error count %v, want 2", got)
	}
	// Failures are not cached as "not found".
	s.keys.mu.Lock()
	neg := len(s.keys.neg)
	s.keys.mu.Unlock()
	if neg != 0 {
		t.Errorf("a failed look-up was cached as not found")
	}
}
