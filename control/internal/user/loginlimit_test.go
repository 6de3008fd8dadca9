package user

import (
	"net"
	"net/netip"
	"strconv"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/valyala/fasthttp"
)

func TestLoginLimiter(t *testing.T) {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	type step struct {
		user, ip string
		at       time.Duration // since t0
		out      loginOutcome  // how the attempt ends when admitted
		wantWait time.Duration // 0: admitted
	}
	tests := []struct {
		name  string
		limit LoginLimit
		steps []step
	}{
		{"user locked after its failures, until the window passes", LoginLimit{PerUser: 2, PerIP: -1, Window: time.Minute}, []step{
			{"alice", "10.0.0.1", 0, loginFailed, 0},
			{"alice", "10.0.0.2", 10 * time.Second, loginFailed, 0},
			{"alice", "10.0.0.3", 20 * time.Second, loginOK, 40 * time.Second}, // even the right password waits
			{"bob", "10.0.0.1", 20 * time.Second, loginFailed, 0},              // another user is not affected
			{"alice", "10.0.0.1", time.Minute, loginOK, 0},                     // window over
		}},
		{"success clears the user's count", LoginLimit{PerUser: 2, PerIP: -1, Window: time.Minute}, []step{
			{"alice", "ip", 0, loginFailed, 0},
			{"alice", "ip", 1, loginOK, 0},
			{"alice", "ip", 2, loginFailed, 0},
			{"alice", "ip", 3, loginFailed, 0},
			{"alice", "ip", 4, loginOK, time.Minute - 2},
		}},
		{"ip locked across usernames; successes do not count", LoginLimit{PerUser: -1, PerIP: 2, Window: time.Minute}, []step{
			{"a", "10.0.0.9", 0, loginOK, 0},
			{"b", "10.0.0.9", 0, loginFailed, 0},
			{"c", "10.0.0.9", 0, loginOK, 0},
			{"d", "10.0.0.9", 5 * time.Second, loginFailed, 0},
			{"e", "10.0.0.9", 5 * time.Second, loginOK, 55 * time.Second},
			{"e", "10.0.0.8", 5 * time.Second, loginOK, 0},
		}},
		{"errors that are not wrong credentials do not count", LoginLimit{PerUser: 1, PerIP: 1, Window: time.Minute}, []step{
			{"alice", "ip", 0, loginOther, 0},
			{"alice", "ip", 1, loginOther, 0},
			{"alice", "ip", 2, loginFailed, 0},
			{"alice", "ip", 3, loginOK, time.Minute - 1}, // the window began with the failure
		}},
		{"defaults: 10 per user", LoginLimit{PerIP: -1}, func() []step {
			var s []step
			for i := range 10 {
				s = append(s, step{"alice", "ip", time.Duration(i) * time.Second, loginFailed, 0})
			}
			return append(s, step{"alice", "ip", 10 * time.Second, loginFailed, 5*time.Minute - 10*time.Second})
		}()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := newLoginLimiter(tt.limit)
			for i, s := range tt.steps {
				now := t0.Add(s.at)
				got := l.begin(s.user, s.ip, now)
				if diff := cmp.Diff(s.wantWait, got); diff != "" {
					t.Fatalf("step %d (%s from %s): wait (-want +got):\n%s", i, s.user, s.ip, diff)
				}
				if got == 0 {
					l.finish(s.user, s.ip, now, s.out)
				}
			}
		})
	}
}

func TestLoginLimiterConcurrentAttemptsReserve(t *testing.T) {
	l := newLoginLimiter(LoginLimit{PerUser: 2, PerIP: -1, Window: time.Minute})
	now := time.Now()
	// Two attempts in flight use up the allowance before either has finished.
	if l.begin("alice", "ip", now) != 0 || l.begin("alice", "ip", now) != 0 {
		t.Fatal("first two attempts refused")
	}
	if l.begin("alice", "ip", now) == 0 {
		t.Fatal("third concurrent attempt admitted")
	}
}

func TestLoginLimiterBoundedMemory(t *testing.T) {
	l := newLoginLimiter(LoginLimit{PerUser: 1, PerIP: -1, Window: time.Minute})
	t0 := time.Now()
	for i := range maxTracked {
		l.users.add(strconv.Itoa(i), t0, time.Minute)
	}
	// Full of live entries: a new name is not tracked (its IP still would be).
	l.begin("newcomer", "ip", t0.Add(time.Second))
	if got := len(l.users.m); got != maxTracked {
		t.Fatalf("%d entries, want %d", got, maxTracked)
	}
	if l.begin("newcomer", "ip", t0.Add(time.Second)) != 0 {
		t.Error("untracked name was limited")
	}
	// Once the window has passed, the sweep frees the table.
	l.begin("later", "ip", t0.Add(2*time.Minute))
	if got := len(l.users.m); got != 1 {
		t.Errorf("after the sweep %d entries, want 1", got)
	}
}

func TestClientIP(t *testing.T) {
	s := &Service{trustedProxies: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("10.1.0.0/16")}}
	tests := []struct {
		name, peer, xff, want string
	}{
		{"direct client", "192.0.2.7:5000", "", "192.0.2.7"},
		{"untrusted peer cannot claim an address", "192.0.2.7:5000", "203.0.113.1", "192.0.2.7"},
		{"trusted gateway", "10.1.2.3:5000", "203.0.113.1", "203.0.113.1"},
		{"trusted gateway, last entry wins", "127.0.0.1:5000", "1.1.1.1, 203.0.113.1", "203.0.113.1"},
		{"trusted gateway, garbage header", "127.0.0.1:5000", "not-an-ip", "127.0.0.1"},
		{"trusted gateway, no header", "127.0.0.1:5000", "", "127.0.0.1"},
		{"ipv6", "[2001:db8::1]:5000", "203.0.113.1", "2001:db8::1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr, err := net.ResolveTCPAddr("tcp", tt.peer)
			if err != nil {
				t.Fatal(err)
			}
			var req fasthttp.Request
			if tt.xff != "" {
				req.Header.Set("X-Forwarded-For", tt.xff)
			}
			var rc fasthttp.RequestCtx
			rc.Init(&req, addr, nil)
			if got := s.clientIP(&rc); got != tt.want {
				t.Errorf("clientIP = %q, want %q", got, tt.want)
			}
		})
	}
}
