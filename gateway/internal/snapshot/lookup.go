package snapshot

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"

	"github.com/maas-platform/maas/pkg/apikey"
)

// ErrLookupLimited reports a key look-up refused by the rate limit: the key is treated as
// unknown.
var ErrLookupLimited = errors.New("snapshot: key look-up rate limit reached")

// Bounds of the look-up caches: a flood cannot grow them past these (and negative entries
// are only made by look-ups, which the rate limit bounds anyway).
const (
	maxFoundKeys    = 10000
	maxNegativeKeys = 10000
)

// Look-up results, the values of maas_gateway_key_lookups_total{result}.
var lookupResults = []string{"found", "not_found", "cached_not_found", "limited", "error"}

// foundKey is a key read by a look-up, kept until a snapshot read after it (at) replaces it.
type foundKey struct {
	k  *Key
	at time.Time // when the look-up's query started
}

type flight struct {
	done chan struct{}
	k    *Key
	err  error
}

// keyLookup is the Store's fallback for keys the snapshot does not know. Safe for
// concurrent use.
type keyLookup struct {
	db      rowQuerier
	lim     *rate.Limiter
	maxWait time.Duration
	timeout time.Duration
	negTTL  time.Duration
	now     func() time.Time
	log     *slog.Logger
	results *prometheus.CounterVec

	mu      sync.Mutex
	flights map[apikey.Hash]*flight   // guarded by mu
	found   map[apikey.Hash]foundKey  // guarded by mu
	neg     map[apikey.Hash]time.Time // expiry; guarded by mu
	lastLog time.Time                 // of the last warning; guarded by mu
}

func newKeyLookup(o Options, db rowQuerier) *keyLookup {
	burst := o.KeyLookupBurst
	if burst <= 0 {
		burst = max(1, o.KeyLookupRate/5)
	}
	l := &keyLookup{
		db: db, lim: rate.NewLimiter(rate.Limit(o.KeyLookupRate), burst),
		maxWait: o.KeyLookupMaxWait, timeout: o.KeyLookupTimeout, negTTL: o.KeyNegativeTTL,
		now: o.Now, log: o.Logger,
		flights: map[apikey.Hash]*flight{}, found: map[apikey.Hash]foundKey{}, neg: map[apikey.Hash]time.Time{},
	}
	l.results = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "maas_gateway_key_lookups_total",
		Help: "Look-ups of API keys the snapshot did not know, by result (found, not_found, cached_not_found, limited, error).",
	}, []string{"result"})
	for _, r := range lookupResults {
		l.results.WithLabelValues(r)
	}
	return l
}

// FindKey returns the usable key with hash h when the current snapshot does not have it
// yet: a key created a moment ago, before the snapshot's reload. It applies the loader's
// rules (revoked and expired keys and keys of inactive users are not found). It returns
// (nil, nil) for an unknown key, and (nil, err) when the look-up was refused by the rate
// limit (ErrLookupLimited) or PostgreSQL did not answer within KeyLookupTimeout; callers
// treat every nil key as unknown. Concurrent calls for one hash share one query; a key not
// found is remembered for KeyNegativeTTL. The hot path never calls it for a known key.
func (s *Store) FindKey(ctx context.Context, h apikey.Hash) (*Key, error) {
	l := s.keys
	if l == nil {
		return nil, nil
	}
	l.mu.Lock()
	now := l.now() // read under mu: the rate limiter must see time move forward
	if f, ok := l.found[h]; ok {
		l.mu.Unlock()
		return f.k, nil
	}
	if exp, ok := l.neg[h]; ok {
		if now.Before(exp) {
			l.mu.Unlock()
			l.results.WithLabelValues("cached_not_found").Inc()
			return nil, nil
		}
		delete(l.neg, h)
	}
	if f, ok := l.flights[h]; ok {
		l.mu.Unlock()
		select {
		case <-f.done:
			return f.k, f.err
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	r := l.lim.ReserveN(now, 1)
	delay := r.DelayFrom(now)
	if !r.OK() || delay > l.maxWait {
		r.CancelAt(now)
		l.mu.Unlock()
		l.results.WithLabelValues("limited").Inc()
		return nil, ErrLookupLimited
	}
	f := &flight{done: make(chan struct{})}
	l.flights[h] = f
	l.mu.Unlock()

	at, k, err := l.query(ctx, h, delay)

	l.mu.Lock()
	delete(l.flights, h)
	switch {
	case err != nil:
		l.results.WithLabelValues("error").Inc()
		if now := l.now(); now.Sub(l.lastLog) >= 10*time.Second {
			l.lastLog = now
			l.log.Warn("snapshot: key look-up failed; the key is refused as unknown", "err", err)
		} else {
			l.log.Debug("snapshot: key look-up failed", "err", err)
		}
	case k != nil:
		l.results.WithLabelValues("found").Inc()
		if len(l.found) < maxFoundKeys {
			l.found[h] = foundKey{k: k, at: at}
		}
	default:
		l.results.WithLabelValues("not_found").Inc()
		if len(l.neg) >= maxNegativeKeys {
			l.sweepLocked(at)
		}
		if len(l.neg) < maxNegativeKeys {
			l.neg[h] = at.Add(l.negTTL)
		}
	}
	l.mu.Unlock()
	f.k, f.err = k, err
	close(f.done)
	return k, err
}

// query waits out the rate limiter's delay, then reads the key with the loader's SQL. at is
// the time the query started: the key is valid as of at or later.
func (l *keyLookup) query(ctx context.Context, h apikey.Hash, delay time.Duration) (at time.Time, k *Key, err error) {
	if delay > 0 {
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return l.now(), nil, ctx.Err()
		case <-t.C:
		}
	}
	qctx, cancel := context.WithTimeout(ctx, l.timeout)
	defer cancel()
	at = l.now()
	k, err = ReadKey(qctx, l.db, h, at)
	return at, k, err
}

// sweepLocked drops expired negative entries.
func (l *keyLookup) sweepLocked(now time.Time) {
	for h, exp := range l.neg {
		if !now.Before(exp) {
			delete(l.neg, h)
		}
	}
}

// replaced forgets the keys found before snap was read: snap has them if they are still
// usable (and, if they were revoked since, they must go).
func (l *keyLookup) replaced(snap *Snapshot) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for h, f := range l.found {
		if f.at.Before(snap.LoadedAt) {
			delete(l.found, h)
		}
	}
}

// ReadKey reads the usable key with hash h and its user, with the same statements and rules
// as Read: nil when the key is unknown, revoked or expired, or its user inactive.
func ReadKey(ctx context.Context, q rowQuerier, h apikey.Hash, now time.Time) (*Key, error) {
	b := NewBuilder(now)
	if err := readUsers(ctx, q, b, usersSQL+` WHERE u.id = (SELECT user_id FROM api_keys WHERE key_hash = $1)`, h[:]); err != nil {
		return nil, err
	}
	if err := readKeys(ctx, q, b, keysSQL+` AND key_hash = $1`, h[:]); err != nil {
		return nil, err
	}
	return b.s.Key(h), nil
}
