package faults

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/maas-platform/maas/pkg/testenv"
)

// simOn starts the simulator engine (in a worker) on addr as backend id, as s.sim does,
// and waits until the simulator answers: a restarted engine comes back where it was.
func (s *stack) simOn(id, addr string) *testenv.Proc {
	s.t.Helper()
	proc, _ := s.p.StartWorker([]string{"--engine", "sim"}, "MAAS_SIM_ADDR="+addr, "MAAS_BACKEND_ID="+id,
		"MAAS_SIM_TTFT=2ms", "MAAS_SIM_ITL=1ms", "MAAS_SIM_ITL_JITTER=0s", "MAAS_LOG_JSON=false")
	testenv.WaitHTTP(s.t, proc, "http://"+addr+"/health", 20*time.Second)
	return proc
}

// TestEngineRestarted: the only engine of a model is killed (SIGKILL) under streamed and
// non-streamed load and started again on its address at once. Requests sent while no
// engine listens fail (the model has nowhere else to go) and open the backend's breaker;
// once the engine is back, service is full again by the time the breaker lets a probe
// through (5 s), and the connections the engine's end closed fail no request.
func TestEngineRestarted(t *testing.T) {
	rate, before, after := pick(50.0, 200.0), pick(time.Second, 5*time.Second), pick(7*time.Second, 20*time.Second)
	const breakerOpenFor = 5 * time.Second // the gateway's (gateway/internal/server)
	fig := report(t, "engine restarted under load (one backend)",
		fmt.Sprintf("One simulator backend for sim-chat; %.0f non-streamed and %.0f streamed chat requests/s from 16 clients each; the engine killed with SIGKILL after %v and started again on its address at once; load kept %v after.", rate, rate, before, after))
	s := newStack(t, stackOptions{})
	addr := testenv.FreeAddr(t)
	proc := s.simOn("sim-r", addr)
	if err := waitFor(20*time.Second, func() bool { return s.healthy("sim-r") }); err != nil {
		t.Fatalf("backend not registered: %v", err)
	}
	_, gw := s.gateway()
	_, key := s.key(gw, nil)

	unary := startLoad(loadSpec{url: gw, key: key, rate: rate, prefix: "restart-u"})
	stream := startLoad(loadSpec{url: gw, key: key, rate: rate, prefix: "restart-s",
		body: `{"model":"sim-chat","messages":[{"role":"user","content":"fault suite"}],"max_tokens":4,"stream":true}`})
	unary.waitOK(t, 20, 10*time.Second)
	stream.waitOK(t, 20, 10*time.Second)
	during(before)
	killed := time.Now()
	proc.Kill()
	proc = s.simOn("sim-r", addr)
	back := time.Now()
	during(after)
	unary.stop()
	stream.stop()

	fig.add(t, "engine away", "%v (killed, then started again and answering)", back.Sub(killed).Round(time.Millisecond))
	for _, l := range []struct {
		name string
		r    *loadRun
	}{{"non-streamed", unary}, {"streamed", stream}} {
		sent, ok := l.r.counts()
		full := time.Duration(0)
		if l.r.failed > 0 {
			full = max(0, l.r.start.Add(l.r.failTo).Sub(back))
		}
		fig.add(t, l.name, "%d sent, %d answered 200, %d failed; full service %v after the engine answered again",
			sent, ok, l.r.failed, full.Round(100*time.Millisecond))
		fig.add(t, l.name+" load", "%s", l.r.summary())
		if limit := breakerOpenFor + time.Second; full > limit {
			t.Errorf("%s: requests still failed %v after the engine was back (limit %v): %s", l.name, full, limit, l.r.summary())
		}
	}
	if n, _ := metricSum(gw, `maas_gateway_upstream_errors_total{backend="sim-r",kind="stale"}`); n > 0 {
		fig.add(t, "stale connections", "%.0f requests met a pooled connection the engine's end had closed and were sent again", n)
	}
}

// healthy reports whether control lists backend id as healthy.
func (s *stack) healthy(id string) bool {
	var state string
	err := s.db.QueryRow(s.t.Context(), `SELECT state FROM backends WHERE id = $1`, id).Scan(&state)
	return err == nil && strings.EqualFold(state, "healthy")
}
