package user

import (
	"sync"
	"time"
)

// LoginLimit bounds failed logins, in memory and per control process. A username or a
// client IP that reaches its number of failures within Window is refused (429 with
// Retry-After) until Window has passed since its first counted failure. A successful
// login clears the username's count.
type LoginLimit struct {
	// PerUser is the number of failed logins allowed per username per Window
	// (0: 10; negative: no limit).
	PerUser int
	// PerIP is the number of failed logins allowed per client IP per Window
	// (0: 50; negative: no limit).
	PerIP int
	// Window is the period the failures are counted over (0: 5 minutes).
	Window time.Duration
}

// DefaultLoginLimit is 10 failures per username and 50 per client IP per 5 minutes.
func DefaultLoginLimit() LoginLimit {
	return LoginLimit{PerUser: 10, PerIP: 50, Window: 5 * time.Minute}
}

func (l LoginLimit) withDefaults() LoginLimit {
	d := DefaultLoginLimit()
	if l.PerUser == 0 {
		l.PerUser = d.PerUser
	}
	if l.PerIP == 0 {
		l.PerIP = d.PerIP
	}
	if l.Window <= 0 {
		l.Window = d.Window
	}
	return l
}

// maxTracked bounds each table of counters; when it is full of live entries new keys are
// not counted (the other dimension still is).
const maxTracked = 100_000

// maxKeyLen bounds the memory a username key can take.
const maxKeyLen = 128

// loginOutcome is how an attempt ended.
type loginOutcome uint8

const (
	loginFailed loginOutcome = iota // wrong username or password: counted
	loginOK                         // clears the username's count, frees the IP's slot
	loginOther                      // neither (database error, disabled user): not counted
)

type failures struct {
	start time.Time // first counted failure of the current window
	n     int       // failures (and attempts in flight) in the window
}

// counters is one dimension (usernames or IPs) of the limiter.
type counters struct {
	limit int
	m     map[string]*failures
	swept time.Time // last full sweep; a full table is swept at most once a second
}

// loginLimiter counts failed logins. Safe for concurrent use; the zero value is not usable.
type loginLimiter struct {
	mu     sync.Mutex
	window time.Duration
	users  counters
	ips    counters
}

func newLoginLimiter(o LoginLimit) *loginLimiter {
	o = o.withDefaults()
	return &loginLimiter{
		window: o.Window,
		users:  counters{limit: o.PerUser, m: map[string]*failures{}},
		ips:    counters{limit: o.PerIP, m: map[string]*failures{}},
	}
}

// current returns key's live entry (nil when none or expired; expired ones are removed).
func (c *counters) current(key string, now time.Time, window time.Duration) *failures {
	f := c.m[key]
	if f != nil && !now.Before(f.start.Add(window)) {
		delete(c.m, key)
		return nil
	}
	return f
}

// wait is how long key must wait before another attempt (0: it may try now).
func (c *counters) wait(key string, now time.Time, window time.Duration) time.Duration {
	if c.limit < 0 || key == "" {
		return 0
	}
	if f := c.current(key, now, window); f != nil && f.n >= c.limit {
		return f.start.Add(window).Sub(now)
	}
	return 0
}

// add counts one attempt of key.
func (c *counters) add(key string, now time.Time, window time.Duration) {
	if c.limit < 0 || key == "" {
		return
	}
	if f := c.current(key, now, window); f != nil {
		f.n++
		return
	}
	if len(c.m) >= maxTracked {
		if now.Sub(c.swept) < time.Second {
			return
		}
		c.swept = now
		for k, f := range c.m {
			if !now.Before(f.start.Add(window)) {
				delete(c.m, k)
			}
		}
		if len(c.m) >= maxTracked {
			return
		}
	}
	c.m[key] = &failures{start: now, n: 1}
}

// undo takes back one attempt of key.
func (c *counters) undo(key string, now time.Time, window time.Duration) {
	if f := c.current(key, now, window); f != nil {
		if f.n--; f.n <= 0 {
			delete(c.m, key)
		}
	}
}

func limitKey(s string) string {
	if len(s) > maxKeyLen {
		return s[:maxKeyLen]
	}
	return s
}

// begin reserves one attempt for username from ip. When either is out of attempts it
// returns how long to wait and reserves nothing; otherwise the caller must call finish.
// Reserving before the password check keeps concurrent guesses within the limit.
func (l *loginLimiter) begin(username, ip string, now time.Time) time.Duration {
	username = limitKey(username)
	l.mu.Lock()
	defer l.mu.Unlock()
	wait := max(l.users.wait(username, now, l.window), l.ips.wait(ip, now, l.window))
	if wait > 0 {
		return wait
	}
	l.users.add(username, now, l.window)
	l.ips.add(ip, now, l.window)
	return 0
}

// finish records how the attempt reserved by begin ended.
func (l *loginLimiter) finish(username, ip string, now time.Time, out loginOutcome) {
	username = limitKey(username)
	l.mu.Lock()
	defer l.mu.Unlock()
	switch out {
	case loginOK:
		delete(l.users.m, username)
		l.ips.undo(ip, now, l.window)
	case loginOther:
		l.users.undo(username, now, l.window)
		l.ips.undo(ip, now, l.window)
	}
}
