package faults

import (
	"bufio"
	"context"
	"fmt"
	"math"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/maas-platform/maas/bench/internal/procstat"
)

// during keeps the test running for d: a scenario phase, not a synchronisation.
func during(d time.Duration) { <-time.After(d) }

func TestBackendKilled(t *testing.T) {
	rate, before, after := pick(200.0, 500.0), pick(time.Second, 5*time.Second), pick(3*time.Second, 25*time.Second)
	fig := report(t, "backend killed (SIGKILL) under load",
		fmt.Sprintf("Two simulator backends for sim-chat; %.0f non-streamed chat requests/s from 16 clients; backend sim-a killed with SIGKILL after %v; load kept %v after the kill.", rate, before, after))
	s := newStack(t, stackOptions{})
	a := s.sim("sim-a")
	s.sim("sim-b")
	_, gw := s.gateway()
	_, key := s.key(gw, nil)

	load := startLoad(loadSpec{url: gw, key: key, rate: rate, prefix: "kill"})
	load.waitOK(t, 20, 10*time.Second)
	during(before)
	a.Kill()
	during(after)
	load.stop()
	sent, ok := load.counts()
	fig.add(t, "requests", "%d sent, %d answered 200, %d failed", sent, ok, load.failed)
	fig.add(t, "load", "%s", load.summary())
	if load.failed != 0 {
		t.Errorf("%d requests failed after a backend was killed: %s", load.failed, load.summary())
	}
}

// TestBackendHangs: a registered backend takes requests and never answers, in the two
// ways an engine can: it accepts the connection and never reads the request (stall: a
// wedged process; the gateway's MAAS_FIRST_BYTE_TIMEOUT, met by the engine's interim
// "100 Continue", catches it), or it reads the request and never answers (hang: a stuck
// generation; MAAS_RESPONSE_HEADER_TIMEOUT catches it).
func TestBackendHangs(t *testing.T) {
	for _, tt := range []struct {
		mode, gatewayEnv, bound string
	}{
		{"stall", "MAAS_FIRST_BYTE_TIMEOUT=1s", "MAAS_FIRST_BYTE_TIMEOUT=1s"},
		{"hang", "MAAS_RESPONSE_HEADER_TIMEOUT=2s", "MAAS_RESPONSE_HEADER_TIMEOUT=2s"},
	} {
		t.Run(tt.mode, func(t *testing.T) {
			rate, dur := pick(50.0, 200.0), pick(4*time.Second, 30*time.Second)
			fig := report(t, "backend accepts and hangs ("+tt.mode+")",
				fmt.Sprintf("Two backends for sim-chat: sim-%s gets every inference request and never answers (MAAS_SIM_FAIL=%s), sim-ok answers; gateway %s; %.0f non-streamed requests/s from 16 clients for %v, client timeout 5 s.", tt.mode, tt.mode, tt.bound, rate, dur))
			s := newStack(t, stackOptions{})
			bad := "sim-" + tt.mode
			s.sim(bad, "MAAS_SIM_FAIL="+tt.mode)
			s.sim("sim-ok")
			_, gw := s.gateway(tt.gatewayEnv)
			_, key := s.key(gw, nil)

			load := startLoad(loadSpec{url: gw, key: key, rate: rate, prefix: tt.mode, timeout: 5 * time.Second})
			during(dur)
			load.stop()
			sent, ok := load.counts()
			fig.add(t, "requests", "%d sent, %d answered 200, %d failed, %d failed over (took ≥ 500 ms), slowest %v", sent, ok, load.failed, load.slow, load.slowest.Round(time.Millisecond))
			if n, found := metricSum(gw, `maas_gateway_upstream_errors_total{backend="`+bad+`"`); found {
				fig.add(t, "upstream errors counted against "+bad, "%.0f", n)
			}
			fig.add(t, "load", "%s", load.summary())
			if load.failed != 0 {
				t.Errorf("%d requests failed with a hanging backend: %s", load.failed, load.summary())
			}
			if sent < int(rate*dur.Seconds()/2) {
				t.Errorf("only %d requests sent in %v (hung clients?): %s", sent, dur, load.summary())
			}
		})
	}
}

func TestPostgresDown(t *testing.T) {
	rate, down := 1000.0, pick(15*time.Second, 60*time.Second)
	// Short heartbeats (the end-to-end tests use 200 ms): a gateway must not take backends
	// out of its pool because their heartbeats, which reach it through PostgreSQL, stopped
	// arriving while PostgreSQL was away.
	const buffer, heartbeat = 2000, 500 * time.Millisecond
	fig := report(t, "PostgreSQL stopped under load",
		fmt.Sprintf("Private PostgreSQL cluster; two simulator backends, workers heartbeating every %v; %.0f non-streamed requests/s from 32 clients; PostgreSQL stopped (fast shutdown) for %v, then started; load kept 3 s after. Gateway MAAS_LEDGER_BUFFER=%d (the outage cannot be held in memory), MAAS_GATEWAY_DATA_DIR set.", heartbeat, rate, down, buffer))
	s := newStack(t, stackOptions{ownPostgres: true})
	s.sim("sim-a", "MAAS_HEARTBEAT_INTERVAL="+heartbeat.String())
	s.sim("sim-b", "MAAS_HEARTBEAT_INTERVAL="+heartbeat.String())
	_, gw := s.gateway(fmt.Sprintf("MAAS_LEDGER_BUFFER=%d", buffer), "MAAS_GATEWAY_DATA_DIR="+t.TempDir())
	keyID, key := s.key(gw, nil)

	load := startLoad(loadSpec{url: gw, key: key, rate: rate, workers: 32, prefix: "pg"})
	load.waitOK(t, 200, 10*time.Second)
	during(2 * time.Second)
	stopped := time.Now()
	stopAt := load.at()
	s.pg.Stop()
	fig.add(t, "PostgreSQL stop took", "%v", time.Since(stopped).Round(time.Millisecond))
	sentBefore, _ := load.counts()
	during(down)
	sentDuring, _ := load.counts()
	s.pg.Start()
	fig.add(t, "PostgreSQL down", "for %v, from %v to %v into the run", time.Since(stopped).Round(100*time.Millisecond), stopAt, load.at())
	during(3 * time.Second)
	load.stop()
	sent, ok := load.counts()
	fig.add(t, "requests", "%d sent (%d while PostgreSQL was down), %d answered 200, %d failed", sent, sentDuring-sentBefore, ok, load.failed)
	fig.add(t, "load", "%s", load.summary())
	if load.failed != 0 {
		t.Errorf("%d requests failed while PostgreSQL was away: %s", load.failed, load.summary())
	}
	c := s.waitLedger(keyID, load.allAnswered(), load.aliases(), 120*time.Second)
	fig.add(t, "ledger", "%s", c)
	if dropped, found := metricSum(gw, "maas_usage_records_dropped_total"); found {
		fig.add(t, "maas_usage_records_dropped_total", "%v", dropped)
	}
	if c.lost != 0 || c.duplicated != 0 {
		t.Errorf("ledger after a PostgreSQL outage: %s", c)
	}
}

// TestRedisDown stops Redis under load, in two configurations of the quota tier: every
// request decided in Redis (MAAS_QUOTA_LEASE_SECONDS=0), where each request meets the
// outage, falls back to the local limits and returns to Redis once it answers; and the
// default leased batches, where a gateway admits from a grant it holds in memory and needs
// Redis again only when the grant ends (a minute at most).
func TestRedisDown(t *testing.T) {
	t.Run("per-request", func(t *testing.T) { redisDown(t, "MAAS_QUOTA_LEASE_SECONDS=0", true) })
	t.Run("leased", func(t *testing.T) { redisDown(t, "", false) })
}

func redisDown(t *testing.T, gatewayEnv string, perRequest bool) {
	rate, down := pick(200.0, 500.0), pick(5*time.Second, 30*time.Second)
	name, tier := "Redis stopped and started under load (every request decided in Redis)", "MAAS_QUOTA_LEASE_SECONDS=0"
	if !perRequest {
		name, tier = "Redis stopped and started under load (leased batches)", "default leases (MAAS_QUOTA_LEASE_SECONDS=1)"
	}
	fig := report(t, name,
		fmt.Sprintf("Private Redis (no persistence: it restarts empty); gateway with MAAS_REDIS_URL, %s; a key with rpm and tpm limits far above the load; %.0f non-streamed requests/s from 16 clients; Redis stopped (SIGTERM) for %v, then started; load kept until the gateway is back on Redis.", tier, rate, down))
	s := newStack(t, stackOptions{ownRedis: true})
	s.sim("sim-a")
	s.sim("sim-b")
	var env []string
	if gatewayEnv != "" {
		env = append(env, gatewayEnv)
	}
	_, gw := s.gateway(env...)
	_, key := s.key(gw, map[string]any{"rpm": 10_000_000, "tpm": 1_000_000_000})

	load := startLoad(loadSpec{url: gw, key: key, rate: rate, prefix: "redis"})
	load.waitOK(t, 50, 10*time.Second)
	during(time.Second)
	if n, err := s.redis.Command("DBSIZE"); err != nil || n == "0" {
		t.Fatalf("the gateway does not use Redis before the outage (DBSIZE %q, %v)", n, err)
	}
	fbBefore, _ := metricSum(gw, "maas_gateway_quota_redis_fallback_total")
	stopAt := load.at()
	s.redis.Stop()
	during(down)
	fbDuring, _ := metricSum(gw, "maas_gateway_quota_redis_fallback_total")
	s.redis.Start()
	restarted := time.Now()
	fig.add(t, "Redis down", "from %v to %v into the run", stopAt, load.at())
	// Back on Redis: the empty Redis gets the gateway's quota keys again and the fallback
	// counter stops moving. A leased gateway comes back when its grant ends (a minute at
	// most); the short run does not wait for that.
	limit := 30 * time.Second
	if !perRequest {
		limit = pick(time.Duration(0), 90*time.Second)
	}
	var back time.Duration
	last, _ := metricSum(gw, "maas_gateway_quota_redis_fallback_total")
	lastChange := time.Now()
	err := waitFor(limit, func() bool {
		v, _ := metricSum(gw, "maas_gateway_quota_redis_fallback_total")
		if v != last {
			last, lastChange = v, time.Now()
		}
		n, err := s.redis.Command("DBSIZE")
		if err == nil && n != "0" && back == 0 {
			back = time.Since(restarted)
		}
		return back > 0 && time.Since(lastChange) > time.Second
	})
	load.stop()
	sent, ok := load.counts()
	fig.add(t, "requests", "%d sent, %d answered 200, %d failed", sent, ok, load.failed)
	fig.add(t, "requests decided locally (maas_gateway_quota_redis_fallback_total)", "%.0f before the outage, %.0f at its end, %.0f after", fbBefore, fbDuring, last)
	switch {
	case back > 0:
		fig.add(t, "quota keys back in Redis", "%v after it restarted", back.Round(10*time.Millisecond))
	case limit == 0:
		fig.add(t, "quota keys back in Redis", "not waited for (short run)")
	default:
		fig.add(t, "quota keys back in Redis", "not within %v", limit)
	}
	toLocal, found1 := metricSum(gw, `maas_gateway_quota_tier_switches_total{tier="local"}`)
	toRedis, found2 := metricSum(gw, `maas_gateway_quota_tier_switches_total{tier="redis"}`)
	if found1 && found2 {
		fig.add(t, "tier switches (maas_gateway_quota_tier_switches_total)", "%.0f to local, %.0f back to Redis", toLocal, toRedis)
		if perRequest && (toLocal < 1 || toRedis < 1) {
			t.Errorf("tier switches: %.0f to local, %.0f to Redis; want at least one each", toLocal, toRedis)
		}
	}
	fig.add(t, "load", "%s", load.summary())
	if load.failed != 0 {
		t.Errorf("%d requests failed while Redis was away: %s", load.failed, load.summary())
	}
	if perRequest && fbDuring <= fbBefore {
		t.Errorf("no request was decided by the local tier during the outage (fallback %v → %v)", fbBefore, fbDuring)
	}
	if limit > 0 && err != nil {
		t.Errorf("the gateway did not return to Redis within %v (fallback counter %v, Redis keys after %v)", limit, last, back)
	}
}

// The ledger's stated bound (gateway/internal/ledger/doc.go, "Durability"): a SIGKILL
// loses at most about Buffer + 2 × Batch records, those still in memory. The test sets
// both so that the bound means something.
const killBuffer, killBatch = 2000, 500

const lostBound = killBuffer + 2*killBatch

func TestGatewayKilled(t *testing.T) {
	rate, dur := pick(300.0, 1000.0), pick(3*time.Second, 20*time.Second)
	fig := report(t, "gateway killed (SIGKILL) under load",
		fmt.Sprintf("Two simulator backends; gateway with MAAS_GATEWAY_DATA_DIR, MAAS_LEDGER_BUFFER=%d, MAAS_LEDGER_BATCH=%d (stated loss bound Buffer + 2 × Batch = %d); %.0f non-streamed requests/s from 16 clients for %v, then the gateway is killed with SIGKILL and restarted on the same data directory.", killBuffer, killBatch, lostBound, rate, dur))
	s := newStack(t, stackOptions{})
	s.sim("sim-a")
	s.sim("sim-b")
	dataDir := t.TempDir()
	ledgerEnv := []string{"MAAS_GATEWAY_DATA_DIR=" + dataDir, fmt.Sprintf("MAAS_LEDGER_BUFFER=%d", killBuffer), fmt.Sprintf("MAAS_LEDGER_BATCH=%d", killBatch)}
	gwProc, gw := s.gateway(ledgerEnv...)
	keyID, key := s.key(gw, nil)

	load := startLoad(loadSpec{url: gw, key: key, rate: rate, prefix: "gwkill"})
	load.waitOK(t, 50, 10*time.Second)
	during(dur)
	gwProc.Kill()
	load.stop()
	sent, ok := load.counts()
	fig.add(t, "requests", "%d sent, %d answered 200 before the kill", sent, ok)

	_, gw2 := s.gateway(ledgerEnv...)
	c := s.waitLedger(keyID, load.ok200(), load.aliases(), 30*time.Second)
	lostCounted, found := metricSum(gw2, "maas_gateway_usage_records_lost_total")
	fig.add(t, "ledger", "%s", c)
	fig.add(t, "records lost", "%d (stated bound %d)", c.lost, lostBound)
	if found {
		fig.add(t, "maas_gateway_usage_records_lost_total after restart", "%.0f", lostCounted)
	} else {
		fig.add(t, "maas_gateway_usage_records_lost_total after restart", "absent")
	}
	if c.lost > lostBound {
		t.Errorf("%d records lost, more than the stated bound %d: %s", c.lost, lostBound, c)
	}
	if !found {
		t.Errorf("the restarted gateway has no maas_gateway_usage_records_lost_total")
	} else if lostCounted < float64(c.lost) {
		t.Errorf("%d records lost but only %.0f counted on restart", c.lost, lostCounted)
	}
	if c.duplicated != 0 {
		t.Errorf("duplicated records after the restart: %s", c)
	}
}

func TestSIGTERMWithOpenStreams(t *testing.T) {
	const n = 200
	tokens, itl := pick(100, 300), 20*time.Millisecond
	fig := report(t, "SIGTERM with open streams",
		fmt.Sprintf("One simulator backend; %d streamed chats of %d tokens (%v between tokens) open at once; the gateway gets SIGTERM once every stream has its first event (MAAS_SHUTDOWN_GRACE 30 s).", n, tokens, itl))
	s := newStack(t, stackOptions{})
	s.sim("sim-a", "MAAS_SIM_ITL="+itl.String(), fmt.Sprintf("MAAS_SIM_OUTPUT_TOKENS=%d", tokens))
	gwProc, gw := s.gateway()
	keyID, key := s.key(gw, nil)

	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: n}}
	body := fmt.Sprintf(`{"model":"sim-chat","messages":[{"role":"user","content":"a long story"}],"max_tokens":%d,"stream":true}`, tokens)
	type result struct {
		events int
		done   bool
		err    error
	}
	results := make([]result, n)
	var aliasMu sync.Mutex
	alias := map[string]string{}
	var opened, wg sync.WaitGroup
	var openFailed atomic.Int64
	sem := make(chan struct{}, 64) // open at most 64 at a time
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for i := range n {
		opened.Add(1)
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := &results[i]
			sem <- struct{}{}
			req, _ := http.NewRequestWithContext(ctx, "POST", gw+"/v1/chat/completions", strings.NewReader(body))
			req.Header.Set("Authorization", "Bearer "+key)
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("X-Request-Id", fmt.Sprintf("term-%d", i))
			resp, err := client.Do(req)
			if err == nil && resp.StatusCode != 200 {
				err = fmt.Errorf("status %d", resp.StatusCode)
				resp.Body.Close()
			}
			if err != nil {
				r.err = err
				openFailed.Add(1)
				<-sem
				opened.Done()
				return
			}
			defer resp.Body.Close()
			aliasMu.Lock()
			alias[resp.Header.Get("X-Request-Id")] = fmt.Sprintf("term-%d", i)
			aliasMu.Unlock()
			br := bufio.NewReader(resp.Body)
			first := true
			for {
				line, err := br.ReadString('\n')
				if err != nil {
					if first {
						<-sem
						opened.Done()
					}
					r.err = err
					return
				}
				if line == "data: [DONE]\n" {
					r.done = true
				}
				if line == "\n" {
					r.events++
					if first {
						first = false
						<-sem
						opened.Done()
					}
				}
			}
		}()
	}
	opened.Wait()
	if f := openFailed.Load(); f > 0 {
		t.Fatalf("%d streams could not be opened", f)
	}
	termAt := time.Now()
	gwProc.Signal(syscall.SIGTERM)
	wg.Wait()
	code, exited := gwProc.Wait(30 * time.Second)
	fig.add(t, "gateway exit", "code %d, %v after SIGTERM", code, time.Since(termAt).Round(time.Millisecond))
	cut := 0
	for i, r := range results {
		if !r.done {
			cut++
			if cut <= 5 {
				t.Errorf("stream %d cut after %d events: %v", i, r.events, r.err)
			}
		}
	}
	fig.add(t, "streams", "%d opened, %d cut", n, cut)
	if !exited || code != 0 {
		t.Errorf("gateway exit code %d (exited %v)", code, exited)
	}
	want := map[string]int{}
	for i := range n {
		want[fmt.Sprintf("term-%d", i)] = 200
	}
	c := s.waitLedger(keyID, want, alias, 30*time.Second)
	fig.add(t, "ledger", "%s", c)
	if c.lost != 0 || c.duplicated != 0 {
		t.Errorf("ledger after SIGTERM: %s", c)
	}
	var full int
	_ = s.db.QueryRow(context.Background(), `SELECT count(*) FROM usage_records WHERE api_key_id = $1 AND status = 200 AND completion_tokens = $2`, keyID, tokens).Scan(&full)
	fig.add(t, "rows with status 200 and all completion tokens", "%d of %d", full, n)
	if full != n {
		t.Errorf("%d of %d rows have status 200 and %d completion tokens", full, n, tokens)
	}
}

func TestControlDown(t *testing.T) {
	rate, down := pick(100.0, 300.0), pick(10*time.Second, 60*time.Second)
	fig := report(t, "control stopped",
		fmt.Sprintf("Two simulator backends heartbeating through control every 2 s (the worker default); %.0f non-streamed requests/s from 16 clients; control stopped (SIGTERM) for %v, then started on the same address. Key B is revoked through control just before it stops; key C is revoked in PostgreSQL directly while control is down.", rate, down))
	s := newStack(t, stackOptions{})
	s.sim("sim-a")
	s.sim("sim-b")
	_, gw := s.gateway()
	_, key := s.key(gw, nil)
	idB, keyB := s.key(gw, nil)
	idC, keyC := s.key(gw, nil)

	load := startLoad(loadSpec{url: gw, key: key, rate: rate, prefix: "ctl"})
	load.waitOK(t, 20, 10*time.Second)
	s.p.Do("DELETE", fmt.Sprintf("%s/api/v1/api-keys/%d", s.p.ControlURL, idB), s.admin, nil, 204, nil)
	if err := waitFor(5*time.Second, func() bool { return modelsStatus(gw, keyB) == 401 }); err != nil {
		t.Fatalf("key B not refused after its revocation: %v", err)
	}
	stopped := time.Now()
	stopAt := load.at()
	s.p.Control.Stop(10 * time.Second)
	if _, err := s.db.Exec(context.Background(), `UPDATE api_keys SET revoked_at = now() WHERE id = $1`, idC); err != nil {
		t.Fatal(err)
	}
	if err := waitFor(5*time.Second, func() bool { return modelsStatus(gw, keyC) == 401 }); err != nil {
		t.Errorf("key C, revoked in PostgreSQL while control is down, is not refused: %v", err)
	}
	during(down - time.Since(stopped))
	failedDown := func() int { load.mu.Lock(); defer load.mu.Unlock(); return load.failed }()
	s.p.StartControl()
	fig.add(t, "control down", "for %v, from %v to %v into the run", time.Since(stopped).Round(100*time.Millisecond), stopAt, load.at())
	during(2 * time.Second)
	load.stop()
	sent, ok := load.counts()
	fig.add(t, "requests", "%d sent, %d answered 200, %d failed (%d of them while control was down)", sent, ok, load.failed, failedDown)
	fig.add(t, "load", "%s", load.summary())
	if load.failed != 0 {
		t.Errorf("%d requests failed while control was away: %s", load.failed, load.summary())
	}
	stB, stC, stA := modelsStatus(gw, keyB), modelsStatus(gw, keyC), modelsStatus(gw, key)
	fig.add(t, "after control returned", "key B %d, key C %d, live key %d", stB, stC, stA)
	if stB != 401 || stC != 401 {
		t.Errorf("revoked keys after control returned: B %d, C %d (want 401)", stB, stC)
	}
	if stA != 200 {
		t.Errorf("live key after control returned: %d", stA)
	}
}

func TestSoak(t *testing.T) {
	if !full {
		t.Skip("the soak runs with MAAS_FAULTS_FULL=1 (make faults)")
	}
	rate, dur, every := 300.0, 10*time.Minute, 5*time.Second
	fig := report(t, "soak",
		fmt.Sprintf("Two simulator backends; %.0f non-streamed requests/s from 16 clients for %v; gateway RSS sampled every %v; slope by least squares over the samples after the first minute.", rate, dur, every))
	s := newStack(t, stackOptions{})
	s.sim("sim-a")
	s.sim("sim-b")
	gwProc, gw := s.gateway()
	_, key := s.key(gw, nil)
	pid := gwProc.Cmd.Process.Pid

	load := startLoad(loadSpec{url: gw, key: key, rate: rate, prefix: "soak"})
	began := time.Now()
	var xs, ys []float64 // minutes, KiB
	var first, peak int64
	var perMinute []string // RSS at each whole minute, MiB
	tick := time.NewTicker(every)
	for time.Since(began) < dur {
		<-tick.C
		rss, _, err := procstat.Memory(pid)
		if err != nil {
			t.Fatalf("read gateway memory: %v", err)
		}
		if first == 0 {
			first = rss
		}
		peak = max(peak, rss)
		m := time.Since(began).Minutes()
		if m >= 1 {
			xs, ys = append(xs, m), append(ys, float64(rss)/1024)
		}
		if int(m) >= len(perMinute) {
			perMinute = append(perMinute, fmt.Sprintf("%.1f", float64(rss)/(1<<20)))
		}
	}
	tick.Stop()
	load.stop()
	slope := leastSquaresSlope(xs, ys)
	sent, ok := load.counts()
	fig.add(t, "requests", "%d sent, %d answered 200, %d failed", sent, ok, load.failed)
	fig.add(t, "gateway RSS", "first sample %.1f MiB, last %.1f MiB, peak %.1f MiB (%d samples after the first minute)",
		float64(first)/(1<<20), ys[len(ys)-1]/1024, float64(peak)/(1<<20), len(ys))
	fig.add(t, "RSS slope", "%.1f KiB/min", slope)
	fig.add(t, "RSS at each minute (MiB)", "%s", strings.Join(perMinute, ", "))
	fig.add(t, "load", "%s", load.summary())
	if load.failed != 0 {
		t.Errorf("%d requests failed during the soak: %s", load.failed, load.summary())
	}
	// Flat: less than 1 MiB per minute of growth once warm.
	if slope > 1024 || math.IsNaN(slope) {
		t.Errorf("gateway RSS grows %.1f KiB/min", slope)
	}
}

// leastSquaresSlope is the slope of the least-squares line through (xs, ys).
func leastSquaresSlope(xs, ys []float64) float64 {
	n := float64(len(xs))
	var sx, sy, sxx, sxy float64
	for i := range xs {
		sx += xs[i]
		sy += ys[i]
		sxx += xs[i] * xs[i]
		sxy += xs[i] * ys[i]
	}
	return (n*sxy - sx*sy) / (n*sxx - sx*sx)
}
