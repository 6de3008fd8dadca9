package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/maas-platform/maas/bench/internal/load"
	"github.com/maas-platform/maas/bench/internal/report"
	"github.com/maas-platform/maas/bench/internal/stack"
	"github.com/maas-platform/maas/pkg/apikey"
)

const (
	modelFast = "bench-fast" // no latency: measures pure overhead
	modelITL5 = "bench-itl5" // 5 ms between tokens
	modelIdle = "bench-idle" // one token per 2 s: idle streams
	manyKeys  = 10000
)

type sim struct {
	model string
	proc  *stack.Proc // the simulator
	pass  *stack.Proc // the pass-through in front of it
}

type env struct {
	o      options
	logger *slog.Logger
	stack  *stack.Stack
	dbURL  string
	db     *pgx.Conn // the bench database, for the ledger checks (one trial at a time)

	fast, itl5, idleSim *sim
	control             *stack.Proc
	gateway             *stack.Proc
	gatewayRedis        *stack.Proc
	pprofAddr           string

	key         string
	manyKeyList []string

	// startGateway starts one more gateway (fresh process) with extra environment.
	startGateway func(ctx context.Context, name string, extra ...string) (*stack.Proc, error)
	self         string // this executable, for pass-through processes

	logDir        string // the run's process logs (and the bench's scratch files)
	controlURL    string
	adminPassword string
	tune          *tuneShared // the fine-tuning scenarios' processes, started by the first of them

	directCapacity float64
	chunkNote      string // how a zero-latency stream arrives, for the stream scenarios

	// platform measures PostgreSQL and Redis in every trial; platformErr says why it could
	// not be found (every measured scenario then fails).
	platform         *platform
	platformErr      error
	localPlatformCPU float64 // platform CPU µs/request of the local-tier scenario
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func setup(ctx context.Context, o options, logger *slog.Logger) (*env, error) {
	if o.dbURL == "" {
		return nil, fmt.Errorf("no PostgreSQL: run `make bench`, or set MAAS_BENCH_DATABASE_URL to a server URL")
	}
	logDir, err := os.MkdirTemp("", "maas-bench-")
	if err != nil {
		return nil, err
	}
	logger.Info("process logs", "dir", logDir)
	token := randomHex(24)
	e := &env{o: o, logger: logger, stack: &stack.Stack{LogDir: logDir, Env: []string{
		"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME"),
		"MAAS_INTERNAL_TOKEN=" + token, "MAAS_SECRET_KEY=" + randomHex(32),
	}}}
	if e.dbURL, err = createDatabase(ctx, o.dbURL); err != nil {
		return e, err
	}
	if e.db, err = pgx.Connect(ctx, e.dbURL); err != nil {
		return e, fmt.Errorf("connect to the bench database: %w", err)
	}
	bin := func(name string) string { return filepath.Join(o.bin, name) }
	self, err := os.Executable()
	if err != nil {
		return e, err
	}

	// Control first: it applies the migrations.
	caddr, _ := stack.FreeAddr()
	e.logDir, e.adminPassword = logDir, randomHex(12)
	// Uploaded files (the 500 MiB scenario's) go to the run's scratch directory.
	e.control, err = e.stack.Start(ctx, "control", caddr, bin("control"), []string{"serve"},
		[]string{"MAAS_DATABASE_URL=" + e.dbURL, "MAAS_CONTROL_ADDR=" + caddr, "MAAS_BOOTSTRAP_ADMIN_PASSWORD=" + e.adminPassword,
			"MAAS_FILES_DIR=" + filepath.Join(logDir, "files")},
		"http://"+caddr+"/ready")
	if err != nil {
		return e, err
	}
	controlURL := "http://" + caddr
	e.controlURL = controlURL

	// Simulators, each with a pass-through in front and a worker registering it.
	startSim := func(model string, itl time.Duration) (*sim, error) {
		s := &sim{model: model}
		addr, _ := stack.FreeAddr()
		s.proc, err = e.stack.Start(ctx, "sim-"+model, addr, bin("worker"), []string{"sim"},
			simEnv(addr, model, itl), "http://"+addr+"/health")
		if err != nil {
			return nil, err
		}
		paddr, _ := stack.FreeAddr()
		s.pass, err = e.stack.Start(ctx, "passthrough-"+model, paddr, self, []string{"passthrough", "-listen", paddr, "-upstream", addr}, nil, "")
		if err != nil {
			return nil, err
		}
		waddr, _ := stack.FreeAddr()
		_, err = e.stack.Start(ctx, "worker-"+model, waddr, bin("worker"),
			[]string{"--engine-url", "http://" + addr, "--engine-kind", "vllm"},
			[]string{"MAAS_WORKER_ADDR=" + waddr, "MAAS_CONTROL_URL=" + controlURL, "MAAS_ENGINE_CAPACITY=20000",
				"MAAS_BACKEND_ID=bench-" + model}, "http://"+waddr+"/health")
		return s, err
	}
	if e.fast, err = startSim(modelFast, 0); err != nil {
		return e, err
	}
	if e.itl5, err = startSim(modelITL5, 5*time.Millisecond); err != nil {
		return e, err
	}
	if e.idleSim, err = startSim(modelIdle, 2*time.Second); err != nil {
		return e, err
	}

	// Tenants: one user with a quota and a key with limits (every request is checked), and
	// 10,000 more keys for the auth-heavy scenario.
	if err := e.seedKeys(ctx); err != nil {
		return e, err
	}

	e.self = self
	e.startGateway = func(ctx context.Context, name string, extra ...string) (*stack.Proc, error) {
		addr, _ := stack.FreeAddr()
		env := append([]string{"MAAS_DATABASE_URL=" + e.dbURL, "MAAS_GATEWAY_ADDR=" + addr, "MAAS_CONTROL_URL=" + controlURL}, extra...)
		return e.stack.Start(ctx, name, addr, bin("gateway"), nil, env, "http://"+addr+"/health")
	}
	var extra []string
	if o.cpuprofile != "" {
		if err := os.MkdirAll(o.cpuprofile, 0o755); err != nil {
			return e, err
		}
		e.pprofAddr, _ = stack.FreeAddr()
		extra = append(extra, "MAAS_PPROF_ADDR="+e.pprofAddr)
	}
	if e.gateway, err = e.startGateway(ctx, "gateway", extra...); err != nil {
		return e, err
	}
	e.platform, e.platformErr = findPlatform(ctx, o.dbURL, o.redisURL)
	if o.redisURL != "" {
		if e.gatewayRedis, err = e.startGateway(ctx, "gateway-redis", "MAAS_REDIS_URL="+o.redisURL); err != nil {
			return e, err
		}
	}
	for _, gw := range []*stack.Proc{e.gateway, e.gatewayRedis} {
		if gw == nil {
			continue
		}
		for _, m := range []string{modelFast, modelITL5, modelIdle} {
			if err := waitServes(ctx, gw.Addr, e.key, m); err != nil {
				return e, err
			}
		}
		if err := waitServes(ctx, gw.Addr, e.manyKeyList[len(e.manyKeyList)-1], modelFast); err != nil {
			return e, err
		}
	}
	if e.chunkNote, err = e.streamChunks(ctx); err != nil {
		return e, err
	}
	return e, nil
}

// simEnv configures one benchmark simulator: one model, no queue limit, answers as long as
// max_tokens asks (the output distribution is far above every request's cap), and every
// stream event written and flushed on its own, also at zero latency (a real engine sends
// tokens one by one; a stream written at once would measure relaying a burst).
func simEnv(addr, model string, itl time.Duration) []string {
	return []string{"MAAS_SIM_ADDR=" + addr, "MAAS_SIM_MODELS=" + model, "MAAS_SIM_EMBEDDING_MODELS=",
		"MAAS_SIM_ITL=" + itl.String(), "MAAS_SIM_TTFT=0s", "MAAS_SIM_MAX_CONCURRENCY=0", "MAAS_SIM_OUTPUT_TOKENS=100000",
		"MAAS_SIM_FLUSH_EVERY_TOKEN=true"}
}

// streamChunks counts the HTTP chunks of one 64-token stream from the zero-latency
// simulator, directly, through its pass-through and through the gateway. The simulator
// must send at least one chunk per token, or the stream scenarios would not measure what
// they say; the other two show what each proxy's client receives (unloaded).
func (e *env) streamChunks(ctx context.Context) (string, error) {
	body := chatBody(modelFast, 64, true)
	path := "/v1/chat/completions"
	var counts [3]int
	for i, t := range []load.Target{
		{Addr: e.fast.proc.Addr, Path: path, Body: body},
		{Addr: e.fast.pass.Addr, Path: path, Body: body},
		{Addr: e.gateway.Addr, Path: path, Body: body, Tokens: []string{e.key}},
	} {
		n, err := load.Chunks(ctx, t)
		if err != nil {
			return "", fmt.Errorf("count stream chunks from %s: %w", t.Addr, err)
		}
		counts[i] = n
	}
	if counts[0] < 64 {
		return "", fmt.Errorf("the simulator sent a 64-token stream in %d HTTP chunks, not one per token: "+
			"does bin/worker know MAAS_SIM_FLUSH_EVERY_TOKEN? (make build)", counts[0])
	}
	return fmt.Sprintf("one 64-token stream, unloaded, arrives in %d HTTP chunks direct, %d through the pass-through, %d through the gateway",
		counts[0], counts[1], counts[2]), nil
}

// close stops every process and closes the database connection.
func (e *env) close() {
	e.stack.Stop()
	if e.db != nil {
		e.db.Close(context.Background())
	}
}

func createDatabase(ctx context.Context, server string) (string, error) {
	conn, err := pgx.Connect(ctx, server)
	if err != nil {
		return "", fmt.Errorf("connect to %s: %w", server, err)
	}
	defer conn.Close(ctx)
	name := "maas_bench_" + time.Now().UTC().Format("20060102150405")
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		return "", fmt.Errorf("create database: %w", err)
	}
	u, err := url.Parse(server)
	if err != nil {
		return "", err
	}
	u.Path = "/" + name
	return u.String(), nil
}

func (e *env) seedKeys(ctx context.Context) error {
	conn, err := pgx.Connect(ctx, e.dbURL)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	var uid int64
	err = conn.QueryRow(ctx, `INSERT INTO users (username, password_hash) VALUES ('bench', '!') RETURNING id`).Scan(&uid)
	if err != nil {
		return fmt.Errorf("seed user: %w", err)
	}
	if _, err := conn.Exec(ctx, `INSERT INTO user_roles (user_id, role_id) SELECT $1, id FROM roles WHERE name = 'developer'`, uid); err != nil {
		return fmt.Errorf("seed role: %w", err)
	}
	// Limits far above what the machine can send, so that they are checked but never hit.
	if _, err := conn.Exec(ctx, `INSERT INTO user_quotas (user_id, requests_per_minute, tokens_per_minute, max_concurrent, monthly_token_budget)
		VALUES ($1, 100000000, 2000000000, 100000, 1000000000000000)`, uid); err != nil {
		return fmt.Errorf("seed quota: %w", err)
	}
	rows := make([][]any, 0, manyKeys+1)
	for i := 0; i <= manyKeys; i++ {
		k, err := apikey.Generate()
		if err != nil {
			return err
		}
		h := apikey.Sum([]byte(k))
		rows = append(rows, []any{uid, fmt.Sprintf("bench-%d", i), apikey.Visible(k), h[:], 10000000, 1000000000})
		if i == 0 {
			e.key = k
		} else {
			e.manyKeyList = append(e.manyKeyList, k)
		}
	}
	_, err = conn.CopyFrom(ctx, pgx.Identifier{"api_keys"}, []string{"user_id", "name", "prefix", "key_hash", "rpm", "tpm"}, pgx.CopyFromRows(rows))
	if err != nil {
		return fmt.Errorf("seed keys: %w", err)
	}
	return nil
}

// waitServes polls the gateway until a chat request for model succeeds with key.
func waitServes(ctx context.Context, addr, key, model string) error {
	deadline := time.Now().Add(60 * time.Second)
	body := string(chatBody(model, 1, false))
	var last string
	for time.Now().Before(deadline) && ctx.Err() == nil {
		req, _ := http.NewRequestWithContext(ctx, "POST", "http://"+addr+"/v1/chat/completions", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+key)
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return nil
			}
			last = fmt.Sprintf("%d %s", resp.StatusCode, b)
		} else {
			last = err.Error()
		}
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("gateway %s never served %s: %s", addr, model, last)
}

func fetch(ctx context.Context, u, file string) error {
	req, _ := http.NewRequestWithContext(ctx, "GET", u, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return fmt.Errorf("%s: %s", u, resp.Status)
	}
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = io.Copy(f, resp.Body)
	return err
}

// checkLedger reads the gateways' dropped-record counters and adds the target.
func (e *env) checkLedger(ctx context.Context, r *report.Run) error {
	sc := &report.Scenario{Name: "usage ledger", Settings: "dropped usage records over the whole run (maas_usage_records_dropped_total)"}
	var dropped float64
	for _, gw := range []*stack.Proc{e.gateway, e.gatewayRedis} {
		if gw == nil {
			continue
		}
		v, err := metricValue(ctx, "http://"+gw.Addr+"/metrics", "maas_usage_records_dropped_total")
		if err != nil {
			sc.Notes = append(sc.Notes, fmt.Sprintf("%s: %v", gw.Name, err))
			continue
		}
		dropped += v
	}
	sc.Targets = append(sc.Targets, report.Target{Name: "usage records dropped", Value: dropped, Max: true})
	sc.Summarise()
	r.Scenarios = append(r.Scenarios, sc)
	return nil
}

func metricValue(ctx context.Context, u, name string) (float64, error) {
	req, _ := http.NewRequestWithContext(ctx, "GET", u, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var sum float64
	found := false
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, name) && (len(line) > len(name) && (line[len(name)] == ' ' || line[len(name)] == '{')) {
			var v float64
			if _, err := fmt.Sscan(line[strings.LastIndexByte(line, ' ')+1:], &v); err == nil {
				sum += v
				found = true
			}
		}
	}
	if !found {
		return 0, fmt.Errorf("metric %s not exported", name)
	}
	return sum, nil
}
