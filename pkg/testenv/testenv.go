// Package testenv starts the platform's real binaries for end-to-end tests: it builds
// gateway, control and worker once per test process, picks free loopback ports, starts
// processes with their logs captured, waits until they answer, and stops them (SIGTERM,
// then SIGKILL) when the test ends.
package testenv

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/maas-platform/maas/pkg/pgdb/pgtest"
)

// Binaries are the built executables.
type Binaries struct {
	Gateway, Control, Worker string
}

var (
	buildOnce sync.Once
	built     Binaries
	buildErr  error
)

// Build compiles the three binaries once per test process (without -race: they are the
// system under test, not the test) and returns their paths. When MAAS_TEST_BIN_DIR names a
// directory holding gateway, control and worker already built (e.g. bin/ after `make
// build`), those are used instead.
func Build(t testing.TB) Binaries {
	t.Helper()
	buildOnce.Do(func() {
		if dir := os.Getenv("MAAS_TEST_BIN_DIR"); dir != "" {
			dir, buildErr = filepath.Abs(dir)
			built = Binaries{
				Gateway: filepath.Join(dir, "gateway"),
				Control: filepath.Join(dir, "control"),
				Worker:  filepath.Join(dir, "worker"),
			}
			for _, p := range []string{built.Gateway, built.Control, built.Worker} {
				if _, err := os.Stat(p); err != nil && buildErr == nil {
					buildErr = fmt.Errorf("MAAS_TEST_BIN_DIR: %w", err)
				}
			}
			return
		}
		dir, err := os.MkdirTemp("", "maas-bin-")
		if err != nil {
			buildErr = err
			return
		}
		root, err := moduleRoot()
		if err != nil {
			buildErr = err
			return
		}
		cmd := exec.Command("go", "build", "-o", dir+string(os.PathSeparator), "./gateway", "./control", "./worker")
		cmd.Dir = root
		out, err := cmd.CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
			return
		}
		built = Binaries{
			Gateway: filepath.Join(dir, "gateway"),
			Control: filepath.Join(dir, "control"),
			Worker:  filepath.Join(dir, "worker"),
		}
	})
	if buildErr != nil {
		t.Fatalf("testenv: %v", buildErr)
	}
	return built
}

func moduleRoot() (string, error) {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return "", fmt.Errorf("cannot locate source")
	}
	return filepath.Abs(filepath.Join(filepath.Dir(file), "..", ".."))
}

// FreeAddr returns a 127.0.0.1:port that was free a moment ago.
func FreeAddr(t testing.TB) string {
	t.Helper()
	// Below the ephemeral range: a port the kernel handed out for ":0" is one it may also
	// give an outgoing connection before the process binds it (a control failed to start
	// with "address already in use" that way, under load).
	return fmt.Sprintf("127.0.0.1:%d", freePort(t))
}

// Proc is a started process. Its combined output is kept and printed when the test fails.
type Proc struct {
	Name string
	Cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{}
	err  error
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Start runs path with args and env (added to a minimal environment: PATH, HOME, TMPDIR).
// It is stopped at cleanup: SIGTERM, then SIGKILL after 10 s.
func Start(t testing.TB, name, path string, args []string, env ...string) *Proc {
	t.Helper()
	cmd := exec.Command(path, args...)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME"), "TMPDIR=" + os.TempDir()}, env...)
	cmd.Dir = t.TempDir() // no stray .env file is read
	p := &Proc{Name: name, Cmd: cmd, out: &syncBuffer{}, done: make(chan struct{})}
	cmd.Stdout = p.out
	cmd.Stderr = p.out
	if err := cmd.Start(); err != nil {
		t.Fatalf("testenv: start %s: %v", name, err)
	}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.Stop(10 * time.Second)
		if t.Failed() || os.Getenv("MAAS_TEST_VERBOSE") != "" {
			t.Logf("--- output of %s ---\n%s", name, p.Output())
		}
	})
	return p
}

// Output is everything the process printed so far.
func (p *Proc) Output() string { return p.out.String() }

// Signal sends sig to the process.
func (p *Proc) Signal(sig os.Signal) { _ = p.Cmd.Process.Signal(sig) }

// Kill sends SIGKILL and waits for the process to end.
func (p *Proc) Kill() {
	_ = p.Cmd.Process.Kill()
	<-p.done
}

// Done is closed when the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Wait waits up to d for the process to exit and returns its exit code (-1 on timeout or signal).
func (p *Proc) Wait(d time.Duration) (int, bool) {
	select {
	case <-p.done:
		return p.Cmd.ProcessState.ExitCode(), true
	case <-time.After(d):
		return -1, false
	}
}

// Stop sends SIGTERM, waits up to grace, then kills.
func (p *Proc) Stop(grace time.Duration) {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.Cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		p.Kill()
	}
}

// WaitHTTP polls url until it answers 200 or timeout passes; it fails the test (with the
// process output) otherwise.
func WaitHTTP(t testing.TB, p *Proc, url string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	client := &http.Client{Timeout: time.Second}
	for time.Now().Before(deadline) {
		if p != nil {
			select {
			case <-p.done:
				t.Fatalf("testenv: %s exited (%v) before %s answered:\n%s", p.Name, p.err, url, p.Output())
			default:
			}
		}
		resp, err := client.Get(url)
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	out := ""
	if p != nil {
		out = p.Output()
	}
	t.Fatalf("testenv: %s did not answer 200 within %v:\n%s", url, timeout, out)
}

// Platform is a set of started processes sharing one fresh database.
type Platform struct {
	t        testing.TB
	Bin      Binaries
	DBURL    string
	RedisURL string // empty unless Options.Redis
	Token    string // MAAS_INTERNAL_TOKEN
	Secret   string // MAAS_SECRET_KEY

	AdminPassword string

	ControlURL  string
	Control     *Proc
	controlAddr string
}

// Options selects what NewPlatform provides.
type Options struct {
	Redis bool // also hand out the test Redis (MAAS_TEST_REDIS_URL)
	// DatabaseURL, when set, is used instead of a fresh database on the shared test
	// server (e.g. a private cluster from StartPostgres); control migrates it at start.
	DatabaseURL string
	// RedisURL, when set, is handed out instead of the shared test Redis (e.g. StartRedis).
	RedisURL string
}

// NewPlatform creates a fresh migrated database and builds the binaries; start processes
// with its Start* methods.
func NewPlatform(t testing.TB, o Options) *Platform {
	t.Helper()
	p := &Platform{
		t:             t,
		Bin:           Build(t),
		DBURL:         o.DatabaseURL,
		RedisURL:      o.RedisURL,
		Token:         "test-internal-token-0123456789",
		Secret:        "test-secret-key-0123456789abcdef0123456789",
		AdminPassword: "Admin-Pass-12345",
	}
	if p.DBURL == "" {
		p.DBURL = pgtest.NewDatabase(t)
	}
	if o.Redis && p.RedisURL == "" {
		p.RedisURL = pgtest.RedisURL(t)
	}
	return p
}

// Env is the environment every platform process gets.
func (p *Platform) Env(extra ...string) []string {
	env := []string{
		"MAAS_DATABASE_URL=" + p.DBURL,
		"MAAS_INTERNAL_TOKEN=" + p.Token,
		"MAAS_SECRET_KEY=" + p.Secret,
		"MAAS_BOOTSTRAP_ADMIN_PASSWORD=" + p.AdminPassword,
		// A worker's own address (a later MAAS_WORKER_ADDR in extra wins): never the
		// default port, which a platform running beside the tests (make run) may hold —
		// a `worker train` started without one failed to bind 127.0.0.1:8003.
		"MAAS_WORKER_ADDR=" + FreeAddr(p.t),
	}
	if p.ControlURL != "" {
		env = append(env, "MAAS_CONTROL_URL="+p.ControlURL)
	}
	if p.RedisURL != "" {
		env = append(env, "MAAS_REDIS_URL="+p.RedisURL)
	}
	return append(env, extra...)
}

// StartControl starts control on a free port and waits for /ready. Called again (after
// the first control stopped), it starts control on the same address, so workers and
// gateways configured with ControlURL find it again.
func (p *Platform) StartControl(extraEnv ...string) *Proc {
	p.t.Helper()
	if p.controlAddr == "" {
		p.controlAddr = FreeAddr(p.t)
	}
	addr := p.controlAddr
	p.ControlURL = "http://" + addr
	proc := Start(p.t, "control", p.Bin.Control, nil, p.Env(append([]string{"MAAS_CONTROL_ADDR=" + addr}, extraEnv...)...)...)
	WaitHTTP(p.t, proc, p.ControlURL+"/ready", 30*time.Second)
	p.Control = proc
	return proc
}

// StartGateway starts a gateway on a free port, waits for /health and returns its base URL.
func (p *Platform) StartGateway(extraEnv ...string) (*Proc, string) {
	p.t.Helper()
	addr := FreeAddr(p.t)
	proc := Start(p.t, "gateway", p.Bin.Gateway, nil, p.Env(append([]string{"MAAS_GATEWAY_ADDR=" + addr}, extraEnv...)...)...)
	url := "http://" + addr
	WaitHTTP(p.t, proc, url+"/health", 30*time.Second)
	return proc, url
}

// StartWorker starts a worker with args (e.g. "--engine", "sim") and extra environment.
// The worker's own address is chosen here; it is returned with the process.
func (p *Platform) StartWorker(args []string, extraEnv ...string) (*Proc, string) {
	p.t.Helper()
	addr := FreeAddr(p.t)
	proc := Start(p.t, "worker", p.Bin.Worker, args, p.Env(append([]string{"MAAS_WORKER_ADDR=" + addr}, extraEnv...)...)...)
	url := "http://" + addr
	WaitHTTP(p.t, proc, url+"/health", 30*time.Second)
	return proc, url
}

// Login returns an access token for username/password from control.
func (p *Platform) Login(username, password string) string {
	p.t.Helper()
	var out struct {
		AccessToken string `json:"access_token"`
	}
	p.Do("POST", p.ControlURL+"/api/v1/auth/login", "", map[string]string{"username": username, "password": password}, 200, &out)
	return out.AccessToken
}

// AdminToken logs in as the bootstrap admin.
func (p *Platform) AdminToken() string { return p.Login("admin", p.AdminPassword) }

// CreateKey creates an API key through control with the given bearer token and request
// fields (at least "name") and returns the secret.
func (p *Platform) CreateKey(token string, fields map[string]any) string {
	p.t.Helper()
	var out struct {
		Key string `json:"key"`
	}
	p.Do("POST", p.ControlURL+"/api/v1/api-keys", token, fields, 201, &out)
	if out.Key == "" {
		p.t.Fatal("testenv: control returned no key")
	}
	return out.Key
}

// Do sends a JSON request and checks the status; out (may be nil) receives the JSON answer.
func (p *Platform) Do(method, url, token string, body any, wantStatus int, out any) {
	p.t.Helper()
	status, raw := DoJSON(p.t, method, url, token, body, out)
	if status != wantStatus {
		p.t.Fatalf("%s %s: status %d, want %d: %s", method, url, status, wantStatus, raw)
	}
}

// DoJSON sends a JSON request with an optional bearer token and decodes a JSON answer
// into out when out is non-nil and the status is 2xx. It returns the status and raw body.
func DoJSON(t testing.TB, method, url, token string, body any, out any) (int, []byte) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(b)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if out != nil && resp.StatusCode/100 == 2 && len(bytes.TrimSpace(raw)) > 0 {
		if err := json.Unmarshal(raw, out); err != nil {
			t.Fatalf("%s %s: decode %q: %v", method, url, strings.TrimSpace(string(raw)), err)
		}
	}
	return resp.StatusCode, raw
}
