package testenv

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// Fault tests stop and start PostgreSQL and Redis under load, so they cannot use the
// servers `make test` shares between packages: Postgres and Redis below are private,
// throwaway servers on free loopback ports, owned by one test and removed when it ends.

// missingService skips the test when run by hand and fails it under CI (any non-empty CI),
// where a missing service must never pass as a skip.
func missingService(t testing.TB, what string) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatalf("testenv: %s is missing; it is required under CI", what)
	}
	t.Skipf("testenv: %s is missing (Debian: apt-get install postgresql redis-server)", what)
}

// pgBinDir finds PostgreSQL's server binaries the way deploy/local/services.sh does: the
// newest /usr/lib/postgresql/*/bin, else the directory of initdb on PATH.
func pgBinDir() (string, bool) {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool { return pgMajor(dirs[i]) < pgMajor(dirs[j]) })
	for i := len(dirs) - 1; i >= 0; i-- {
		if _, err := os.Stat(filepath.Join(dirs[i], "initdb")); err == nil {
			return dirs[i], true
		}
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		return filepath.Dir(p), true
	}
	return "", false
}

func pgMajor(dir string) int {
	n, _ := strconv.Atoi(filepath.Base(filepath.Dir(dir)))
	return n
}

// Postgres is a private PostgreSQL cluster (fsync off: tests only). Stop and Start may be
// called any number of times; the port stays the same. Not safe for concurrent use.
type Postgres struct {
	t    testing.TB
	bin  string
	dir  string
	port int
	URL  string // superuser URL of database "postgres"
}

// StartPostgres creates a cluster in a new temporary directory (~2 s), starts it on a free
// loopback port and removes it when the test ends. As root, the server runs as the
// postgres user (initdb refuses root).
func StartPostgres(t testing.TB) *Postgres {
	t.Helper()
	bin, ok := pgBinDir()
	if !ok {
		missingService(t, "PostgreSQL (initdb, pg_ctl)")
	}
	dir, err := os.MkdirTemp("", "maas-faults-pg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			missingService(t, "the postgres user (needed to run PostgreSQL as root)")
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chown(dir, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	pg := &Postgres{t: t, bin: bin, dir: dir, port: freePort(t)}
	pg.URL = fmt.Sprintf("postgresql://postgres@127.0.0.1:%d/postgres?sslmode=disable", pg.port)
	if out, err := pg.run("initdb", "-D", pg.data(), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-locale", "--no-sync"); err != nil {
		t.Fatalf("testenv: initdb: %v\n%s", err, out)
	}
	t.Cleanup(func() { _, _ = pg.run("pg_ctl", "-D", pg.data(), "-m", "immediate", "-w", "stop") })
	pg.Start()
	return pg
}

func (pg *Postgres) data() string { return filepath.Join(pg.dir, "data") }

// run runs one of the cluster's binaries, as postgres when we are root.
func (pg *Postgres) run(name string, args ...string) ([]byte, error) {
	path := filepath.Join(pg.bin, name)
	var cmd *exec.Cmd
	if os.Geteuid() == 0 {
		cmd = exec.Command("runuser", append([]string{"-u", "postgres", "--", path}, args...)...)
	} else {
		cmd = exec.Command(path, args...)
	}
	cmd.Dir = pg.dir
	return cmd.CombinedOutput()
}

// Start starts the server and waits until it accepts connections.
func (pg *Postgres) Start() {
	pg.t.Helper()
	opts := fmt.Sprintf("-c listen_addresses=127.0.0.1 -p %d -k %s -c max_connections=200 -c fsync=off -c synchronous_commit=off -c full_page_writes=off", pg.port, pg.dir)
	if out, err := pg.run("pg_ctl", "-D", pg.data(), "-l", filepath.Join(pg.dir, "server.log"), "-w", "-t", "60", "start", "-o", opts); err != nil {
		log, _ := os.ReadFile(filepath.Join(pg.dir, "server.log"))
		pg.t.Fatalf("testenv: pg_ctl start: %v\n%s\n%s", err, out, log)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		c, err := pgx.Connect(ctx, pg.URL)
		if err == nil {
			c.Close(ctx)
			return
		}
		if ctx.Err() != nil {
			pg.t.Fatalf("testenv: PostgreSQL on port %d does not answer: %v", pg.port, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Stop stops the server (fast shutdown: open sessions are ended) and waits until it is gone.
func (pg *Postgres) Stop() {
	pg.t.Helper()
	if out, err := pg.run("pg_ctl", "-D", pg.data(), "-m", "fast", "-w", "-t", "60", "stop"); err != nil {
		pg.t.Fatalf("testenv: pg_ctl stop: %v\n%s", err, out)
	}
}

// Redis is a private redis-server without persistence: a restart starts empty, as after a
// failover to a fresh replica. Stop and Start may be called any number of times; the port
// stays the same. Not safe for concurrent use.
type Redis struct {
	t    testing.TB
	path string
	dir  string
	port int
	URL  string
	proc *Proc
}

// StartRedis starts a private Redis on a free loopback port, stopped when the test ends.
func StartRedis(t testing.TB) *Redis {
	t.Helper()
	path, err := exec.LookPath("redis-server")
	if err != nil {
		missingService(t, "redis-server")
	}
	r := &Redis{t: t, path: path, dir: t.TempDir(), port: freePort(t)}
	r.URL = fmt.Sprintf("redis://127.0.0.1:%d/0", r.port)
	r.Start()
	return r
}

// Start starts the server and waits until it answers PING.
func (r *Redis) Start() {
	r.t.Helper()
	r.proc = Start(r.t, "redis", r.path, []string{"--bind", "127.0.0.1", "--port", strconv.Itoa(r.port),
		"--save", "", "--appendonly", "no", "--dir", r.dir, "--daemonize", "no"})
	deadline := time.Now().Add(10 * time.Second)
	for {
		if r.ping() {
			return
		}
		select {
		case <-r.proc.Done():
			r.t.Fatalf("testenv: redis-server exited:\n%s", r.proc.Output())
		default:
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("testenv: redis-server on port %d does not answer:\n%s", r.port, r.proc.Output())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Stop stops the server (SIGTERM; SIGKILL after 5 s) and waits until it is gone.
func (r *Redis) Stop() {
	if r.proc != nil {
		r.proc.Stop(5 * time.Second)
	}
}

// Command sends one inline command (e.g. "DBSIZE") and returns the first line of the
// answer without its type byte.
func (r *Redis) Command(cmd string) (string, error) {
	c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", r.port), time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Write([]byte(cmd + "\r\n")); err != nil {
		return "", err
	}
	buf := make([]byte, 512)
	n, err := c.Read(buf)
	if err != nil {
		return "", err
	}
	line, _, _ := strings.Cut(string(buf[:n]), "\r\n")
	if len(line) == 0 || line[0] == '-' {
		return "", fmt.Errorf("redis %s: %q", cmd, line)
	}
	return line[1:], nil
}

func (r *Redis) ping() bool {
	s, err := r.Command("PING")
	return err == nil && s == "PONG"
}

// freePort returns a loopback port that was free a moment ago, below the kernel's
// ephemeral range: a server restarted on it must not find it taken by an outgoing
// connection (deploy/local/services.sh picks its ports the same way).
func freePort(t testing.TB) int {
	t.Helper()
	lo := 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) > 0 {
			if n, err := strconv.Atoi(f[0]); err == nil && n > 12000 {
				lo = n
			}
		}
	}
	for range 200 {
		p := 10000 + rand.IntN(lo-10000)
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err == nil {
			l.Close()
			return p
		}
	}
	t.Fatal("testenv: no free port below the ephemeral range")
	return 0
}
