package upstream

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/sony/gobreaker/v2"

	"github.com/maas-platform/maas/gateway/internal/snapshot"
)

// A breaker opened by refused connections closes as soon as the backend accepts
// connections again, long before its open time; one opened by other failures waits it out.
func TestBreakerClosesWhenBackendAcceptsAgain(t *testing.T) {
	for _, tc := range []struct {
		outcome   Outcome
		wantClose bool
	}{{Unreachable, true}, {Failure, false}} {
		t.Run(map[Outcome]string{Unreachable: "unreachable", Failure: "failure"}[tc.outcome], func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			addr := ln.Addr().String()
			ln.Close() // nothing listens: the engine is away
			o := testOptions()
			o.BreakerOpenFor = time.Hour // only the probe can close it within the test
			b := backend("a", 10, 100)
			b.URL = "http://" + addr
			p, m := newTestPool(t, snapshot.PolicyLeastOutstanding, o, b)
			u := p.Get("a")
			for range 3 {
				l, err := p.Acquire(context.Background(), Request{Model: m})
				if err != nil {
					t.Fatal(err)
				}
				l.Release(tc.outcome)
			}
			if u.BreakerState() != gobreaker.StateOpen {
				t.Fatalf("breaker %v after 3 failures", u.BreakerState())
			}
			// Still away: the breaker stays open through several probes.
			time.Sleep(3 * probeEvery)
			if u.BreakerState() != gobreaker.StateOpen {
				t.Fatalf("breaker %v while nothing listens", u.BreakerState())
			}
			back, err := net.Listen("tcp", addr)
			if err != nil {
				t.Skipf("the port was taken meanwhile: %v", err)
			}
			defer back.Close()
			go func() {
				for {
					c, err := back.Accept()
					if err != nil {
						return
					}
					c.Close()
				}
			}()
			start := time.Now()
			deadline := start.Add(2 * time.Second)
			if !tc.wantClose {
				deadline = start.Add(5 * probeEvery)
			}
			for u.BreakerState() == gobreaker.StateOpen && time.Now().Before(deadline) {
				time.Sleep(5 * time.Millisecond)
			}
			closed := u.BreakerState() == gobreaker.StateClosed
			if closed != tc.wantClose {
				t.Fatalf("breaker %v %v after the backend listens again", u.BreakerState(), time.Since(start))
			}
			if closed {
				t.Logf("breaker closed %v after the backend listened again", time.Since(start).Round(time.Millisecond))
				l, err := p.Acquire(context.Background(), Request{Model: m})
				if err != nil {
					t.Fatalf("acquire after the breaker closed: %v", err)
				}
				l.Release(Success)
			}
		})
	}
}
