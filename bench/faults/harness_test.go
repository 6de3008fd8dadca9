package faults

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/maas-platform/maas/pkg/pgdb"
	"github.com/maas-platform/maas/pkg/testenv"
)

// full selects the full outages and the soak (make faults) instead of the short versions
// that run in make test.
var full = os.Getenv("MAAS_FAULTS_FULL") != ""

// pick returns short under go test, long under MAAS_FAULTS_FULL.
func pick[T any](short, long T) T {
	if full {
		return long
	}
	return short
}

func TestMain(m *testing.M) {
	code := m.Run()
	if out := os.Getenv("MAAS_FAULTS_OUT"); out != "" {
		if err := writeReport(out); err != nil {
			fmt.Fprintln(os.Stderr, "faults:", err)
			if code == 0 {
				code = 1
			}
		}
	}
	os.Exit(code)
}

// stack is one platform: control, simulators, a gateway and their database.
type stack struct {
	t     *testing.T
	p     *testenv.Platform
	db    *pgxpool.Pool
	admin string
	pg    *testenv.Postgres // private cluster, when asked for
	redis *testenv.Redis    // private Redis, when asked for
}

type stackOptions struct {
	ownPostgres bool // a private PostgreSQL cluster the test may stop
	ownRedis    bool // a private Redis the test may stop; the gateway uses it
}

func newStack(t *testing.T, o stackOptions) *stack {
	t.Helper()
	s := &stack{t: t}
	var po testenv.Options
	if o.ownPostgres {
		s.pg = testenv.StartPostgres(t)
		po.DatabaseURL = s.pg.URL
	}
	if o.ownRedis {
		s.redis = testenv.StartRedis(t)
		po.RedisURL = s.redis.URL
	}
	s.p = testenv.NewPlatform(t, po)
	s.p.StartControl()
	db, err := pgdb.Connect(context.Background(), s.p.DBURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Close)
	s.db = db
	s.admin = s.p.AdminToken()
	return s
}

// sim starts a worker with the simulator engine registered as backend id and waits until
// control lists it healthy. The simulator answers 4-token chats with 2 ms to the first
// token and the worker heartbeats at its default interval (2 s) unless env says otherwise
// (later entries win).
func (s *stack) sim(id string, env ...string) *testenv.Proc {
	s.t.Helper()
	addr := testenv.FreeAddr(s.t)
	env = append([]string{"MAAS_SIM_ADDR=" + addr, "MAAS_BACKEND_ID=" + id,
		"MAAS_SIM_TTFT=2ms", "MAAS_SIM_ITL=1ms", "MAAS_SIM_ITL_JITTER=0s", "MAAS_LOG_JSON=false"}, env...)
	proc, _ := s.p.StartWorker([]string{"--engine", "sim"}, env...)
	deadline := time.Now().Add(20 * time.Second)
	for {
		var state string
		err := s.db.QueryRow(context.Background(), `SELECT state FROM backends WHERE id = $1`, id).Scan(&state)
		if err == nil && state == "healthy" {
			return proc
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("backend %s not registered: %v %s\n%s", id, err, state, proc.Output())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// gateway starts a gateway (access log off) and waits until it is ready.
func (s *stack) gateway(env ...string) (*testenv.Proc, string) {
	s.t.Helper()
	proc, url := s.p.StartGateway(append([]string{"MAAS_ACCESS_LOG=false"}, env...)...)
	testenv.WaitHTTP(s.t, proc, url+"/ready", 30*time.Second)
	return proc, url
}

// key creates an API key and waits until the gateway at gw accepts it.
func (s *stack) key(gw string, fields map[string]any) (int64, string) {
	s.t.Helper()
	if fields == nil {
		fields = map[string]any{}
	}
	fields["name"] = "faults"
	var out struct {
		ID  int64  `json:"id"`
		Key string `json:"key"`
	}
	s.p.Do("POST", s.p.ControlURL+"/api/v1/api-keys", s.admin, fields, 201, &out)
	if err := waitFor(10*time.Second, func() bool { return modelsStatus(gw, out.Key) == 200 }); err != nil {
		s.t.Fatalf("new key not accepted by the gateway: %v", err)
	}
	return out.ID, out.Key
}

// modelsStatus is the status of GET /v1/models with key (0 when the gateway does not answer).
func modelsStatus(gw, key string) int {
	req, _ := http.NewRequest("GET", gw+"/v1/models", nil)
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := probeClient.Do(req)
	if err != nil {
		return 0
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

var probeClient = &http.Client{Timeout: 5 * time.Second}

// waitFor polls cond every 20 ms until it holds or limit passes.
func waitFor(limit time.Duration, cond func() bool) error {
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("condition not met within %v", limit)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}

// metricSum adds every sample of a metric on base/metrics whose line starts with name:
// a bare name sums all label sets, `name{a="x"` those with a="x" first among their
// labels; ok is false when the page has no such sample or does not answer.
func metricSum(base, name string) (sum float64, ok bool) {
	resp, err := probeClient.Get(base + "/metrics")
	if err != nil {
		return 0, false
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name) {
			continue
		}
		rest := line[len(name):]
		if rest == "" || !strings.ContainsRune(" {,", rune(rest[0])) {
			continue
		}
		f := strings.Fields(rest)
		if v, err := strconv.ParseFloat(f[len(f)-1], 64); err == nil {
			sum += v
			ok = true
		}
	}
	return sum, ok
}

// ledgerRows counts usage_records rows per client request id for one API key. A row is
// matched to the client's X-Request-Id through its client_request_id column when the
// table has one, else through alias (the gateway's own request id, from the response's
// X-Request-Id, to the client's), else its request_id is taken as the client's.
func (s *stack) ledgerRows(keyID int64, alias map[string]string) (map[string]int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var has bool
	if err := s.db.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM information_schema.columns
		WHERE table_name = 'usage_records' AND column_name = 'client_request_id')`).Scan(&has); err != nil {
		return nil, err
	}
	clientCol := "''"
	if has {
		clientCol = "COALESCE(client_request_id, '')"
	}
	rows, err := s.db.Query(ctx, `SELECT request_id, `+clientCol+` FROM usage_records WHERE api_key_id = $1`, keyID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]int{}
	for rows.Next() {
		var id, client string
		if err := rows.Scan(&id, &client); err != nil {
			return nil, err
		}
		switch {
		case client != "":
			id = client
		case alias[id] != "":
			id = alias[id]
		}
		out[id]++
	}
	return out, rows.Err()
}

// ledgerCheck compares the ledger with the requests a load run saw answered.
type ledgerCheck struct {
	answered, rows, lost, duplicated, unseen int
}

func (c ledgerCheck) String() string {
	return fmt.Sprintf("%d answered, %d rows, %d lost, %d duplicated, %d rows for requests the client did not see answered",
		c.answered, c.rows, c.lost, c.duplicated, c.unseen)
}

// waitLedger polls the ledger until every answered id has a row and the row count has
// settled (or rows stopped arriving for 10 s, or limit passed), then compares.
func (s *stack) waitLedger(keyID int64, answered map[string]int, alias map[string]string, limit time.Duration) ledgerCheck {
	s.t.Helper()
	deadline := time.Now().Add(limit)
	prev, since := -1, time.Now()
	var c ledgerCheck
	for {
		rows, err := s.ledgerRows(keyID, alias)
		if err == nil {
			c = compareLedger(answered, rows)
			if c.rows != prev {
				prev, since = c.rows, time.Now()
			}
			// Complete and settled, or no row written for 10 s (records are missing for good).
			if (c.lost == 0 && time.Since(since) >= 500*time.Millisecond) || time.Since(since) >= 10*time.Second {
				return c
			}
		}
		if time.Now().After(deadline) {
			if err != nil {
				s.t.Errorf("read ledger: %v", err)
			}
			return c
		}
		time.Sleep(250 * time.Millisecond)
	}
}

func compareLedger(answered, rows map[string]int) ledgerCheck {
	c := ledgerCheck{answered: len(answered)}
	for id, n := range rows {
		c.rows += n
		if n > 1 {
			c.duplicated += n - 1
		}
		if _, ok := answered[id]; !ok {
			c.unseen++
		}
	}
	for id := range answered {
		if rows[id] == 0 {
			c.lost++
		}
	}
	return c
}

// loadSpec is a steady open-loop load: workers goroutines, each sending on its own ticker
// so that together they send rate requests per second (a worker whose request is slow
// skips the ticks it missed). Requests go to 127.0.0.1 only and stop with the run.
type loadSpec struct {
	url, key string
	rate     float64
	workers  int
	timeout  time.Duration // per request
	prefix   string        // X-Request-Id prefix
	body     string        // default: a 4-token chat
}

// loadRun is a running or finished load.
type loadRun struct {
	spec  loadSpec
	halt  chan struct{} // closed by stop: send no more
	wg    sync.WaitGroup
	start time.Time
	end   time.Time

	mu       sync.Mutex
	sent     int
	failed   int
	answered map[string]int    // client request id -> status
	alias    map[string]string // the gateway's request id (response X-Request-Id) -> the client's
	statuses map[int]int
	errs     map[string]int // transport errors by text (bounded)
	firstErr string
	slowest  time.Duration
	slow     int // requests that took 500 ms or more (a failover after a timeout, a queue)
	// failFrom and failTo bound when failed requests were sent, since start.
	failFrom, failTo time.Duration
}

func startLoad(spec loadSpec) *loadRun {
	if spec.workers == 0 {
		spec.workers = 16
	}
	if spec.timeout == 0 {
		spec.timeout = 10 * time.Second
	}
	if spec.body == "" {
		spec.body = `{"model":"sim-chat","messages":[{"role":"user","content":"fault suite"}],"max_tokens":4}`
	}
	r := &loadRun{spec: spec, halt: make(chan struct{}), start: time.Now(), answered: map[string]int{}, alias: map[string]string{}, statuses: map[int]int{}, errs: map[string]int{}}
	client := &http.Client{
		Timeout:   spec.timeout,
		Transport: &http.Transport{MaxIdleConnsPerHost: spec.workers, DisableCompression: true},
	}
	every := time.Duration(float64(spec.workers) / spec.rate * float64(time.Second))
	for w := range spec.workers {
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			// Spread the workers' ticks over one interval.
			select {
			case <-time.After(every * time.Duration(w) / time.Duration(spec.workers)):
			case <-r.halt:
				return
			}
			tick := time.NewTicker(every)
			defer tick.Stop()
			for i := 0; ; i++ {
				r.one(client, fmt.Sprintf("%s-%d-%d", spec.prefix, w, i))
				select {
				case <-r.halt:
					return
				case <-tick.C:
				}
			}
		}()
	}
	return r
}

// one sends one request; it is never cancelled by stop, only bounded by the client timeout.
func (r *loadRun) one(client *http.Client, id string) {
	req, _ := http.NewRequest("POST", r.spec.url+"/v1/chat/completions", strings.NewReader(r.spec.body))
	req.Header.Set("Authorization", "Bearer "+r.spec.key)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Request-Id", id)
	began := time.Now()
	resp, err := client.Do(req)
	var body []byte
	if err == nil {
		body, err = io.ReadAll(resp.Body)
		resp.Body.Close()
	}
	took := time.Since(began)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.sent++
	if took > r.slowest {
		r.slowest = took
	}
	if took >= 500*time.Millisecond {
		r.slow++
	}
	if err != nil || resp.StatusCode != 200 {
		at := began.Sub(r.start)
		if r.failed == 0 || at < r.failFrom {
			r.failFrom = at
		}
		r.failTo = max(r.failTo, at)
	}
	if err != nil {
		r.failed++
		msg := err.Error()
		if len(r.errs) < 20 {
			r.errs[msg]++
		}
		if r.firstErr == "" {
			r.firstErr = msg
		}
		return
	}
	r.answered[id] = resp.StatusCode
	if gid := resp.Header.Get("X-Request-Id"); gid != "" && gid != id {
		r.alias[gid] = id
	}
	r.statuses[resp.StatusCode]++
	if resp.StatusCode != 200 {
		r.failed++
		if r.firstErr == "" {
			r.firstErr = fmt.Sprintf("%d %s", resp.StatusCode, body)
		}
	}
}

// stop ends the run: no new request is sent; those in flight finish (within the client
// timeout) and count.
func (r *loadRun) stop() *loadRun {
	close(r.halt)
	r.wg.Wait()
	r.end = time.Now()
	return r
}

// at is how far into the run we are.
func (r *loadRun) at() time.Duration { return time.Since(r.start).Round(100 * time.Millisecond) }

// counts returns requests sent and answered with 200 so far.
func (r *loadRun) counts() (sent, ok int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.sent, r.statuses[200]
}

// waitOK waits until n more requests have been answered 200 (the load reaches the
// backends), failing the test after limit.
func (r *loadRun) waitOK(t *testing.T, n int, limit time.Duration) {
	t.Helper()
	_, base := r.counts()
	if err := waitFor(limit, func() bool { _, ok := r.counts(); return ok >= base+n }); err != nil {
		t.Fatalf("load: %d requests not answered: %v (%s)", n, err, r.summary())
	}
}

// ok200 returns the ids answered 200.
func (r *loadRun) ok200() map[string]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[string]int{}
	for id, st := range r.answered {
		if st == 200 {
			out[id] = st
		}
	}
	return out
}

// aliases returns the gateway's request ids mapped to the client's.
func (r *loadRun) aliases() map[string]string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[string]string, len(r.alias))
	for k, v := range r.alias {
		out[k] = v
	}
	return out
}

// allAnswered returns every id the gateway answered, whatever the status.
func (r *loadRun) allAnswered() map[string]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[string]int, len(r.answered))
	for id, st := range r.answered {
		out[id] = st
	}
	return out
}

func (r *loadRun) summary() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	end := r.end
	if end.IsZero() {
		end = time.Now()
	}
	secs := end.Sub(r.start).Seconds()
	var st []string
	for code, n := range r.statuses {
		st = append(st, fmt.Sprintf("%d×%d", n, code))
	}
	sort.Strings(st)
	s := fmt.Sprintf("%d sent in %.1f s (%.0f/s), %d failed, statuses [%s], %d took ≥ 500 ms, slowest %v",
		r.sent, secs, float64(r.sent)/secs, r.failed, strings.Join(st, " "), r.slow, r.slowest.Round(time.Millisecond))
	if r.failed > 0 {
		s += fmt.Sprintf(", failures sent from %.1f s to %.1f s into the run", r.failFrom.Seconds(), r.failTo.Seconds())
	}
	if r.firstErr != "" {
		s += ", first error: " + truncate(r.firstErr, 300)
	}
	return s
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

// --- figures -------------------------------------------------------------------------

type figure struct {
	name, scenario string
	result         string
	values         [][2]string
	took           time.Duration
}

var (
	figMu   sync.Mutex
	figures []*figure
)

// report starts a case's figures; the case adds values and its result is set at cleanup.
func report(t *testing.T, name, scenario string) *figure {
	f := &figure{name: name, scenario: scenario}
	began := time.Now()
	t.Cleanup(func() {
		f.took = time.Since(began)
		switch {
		case t.Skipped():
			f.result = "skipped"
		case t.Failed():
			f.result = "**FAIL**"
		default:
			f.result = "pass"
		}
		figMu.Lock()
		figures = append(figures, f)
		figMu.Unlock()
	})
	t.Logf("%s: %s", name, scenario)
	return f
}

// add records one figure and logs it.
func (f *figure) add(t *testing.T, key string, format string, args ...any) {
	v := fmt.Sprintf(format, args...)
	f.values = append(f.values, [2]string{key, v})
	t.Logf("%s: %s", key, v)
}

func writeReport(path string) error {
	figMu.Lock()
	defer figMu.Unlock()
	var b strings.Builder
	mode := "short (go test)"
	if full {
		mode = "full (make faults, MAAS_FAULTS_FULL=1)"
	}
	version := os.Getenv("MAAS_FAULTS_VERSION")
	if version == "" {
		version = "unknown"
	}
	fmt.Fprintf(&b, "# Fault suite results\n\nWritten by `make faults` (bench/faults) on %s at %s; mode: %s.\n", time.Now().UTC().Format("2006-01-02 15:04 MST"), version, mode)
	fmt.Fprintf(&b, "Real gateway, control and worker processes with the simulator engine, real PostgreSQL and Redis, all on loopback on one machine (%d CPUs). Failed requests are transport errors, timeouts and any status but 200.\n\n", runtime.NumCPU())
	fmt.Fprintf(&b, "| case | result | duration |\n|---|---|---|\n")
	for _, f := range figures {
		fmt.Fprintf(&b, "| %s | %s | %.0f s |\n", f.name, f.result, f.took.Seconds())
	}
	for _, f := range figures {
		fmt.Fprintf(&b, "\n## %s — %s\n\n%s\n\n", f.name, f.result, f.scenario)
		for _, kv := range f.values {
			fmt.Fprintf(&b, "- %s: %s\n", kv[0], kv[1])
		}
	}
	return os.WriteFile(path, []byte(b.String()), 0o644)
}
