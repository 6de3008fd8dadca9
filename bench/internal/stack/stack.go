// Package stack starts and stops the processes a benchmark run measures: simulators,
// control, workers, the pass-through and gateways, each with its output in a log file.
package stack

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"
)

// Proc is a started process.
type Proc struct {
	Name string
	Addr string // host:port it serves on
	cmd  *exec.Cmd
	done chan struct{}
	log  string
}

// PID of the process.
func (p *Proc) PID() int { return p.cmd.Process.Pid }

// Stack owns the processes of a run. Stop ends them in reverse start order.
type Stack struct {
	LogDir string
	Env    []string // base environment for every process
	Logger *slog.Logger
	procs  []*Proc
}

// FreeAddr returns a loopback address that was free a moment ago.
func FreeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// Start runs bin with args and extra environment, then waits until healthURL (if not
// empty) answers 200.
func (s *Stack) Start(ctx context.Context, name, addr, bin string, args []string, env []string, healthURL string) (*Proc, error) {
	logPath := filepath.Join(s.LogDir, name+".log")
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = append(append(os.Environ()[:0:0], s.Env...), env...)
	cmd.Stdout = f
	cmd.Stderr = f
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &Proc{Name: name, Addr: addr, cmd: cmd, done: make(chan struct{}), log: logPath}
	go func() {
		cmd.Wait()
		f.Close()
		close(p.done)
	}()
	s.procs = append(s.procs, p)
	if healthURL == "" {
		return p, nil
	}
	if err := waitHTTP(ctx, p, healthURL, 60*time.Second); err != nil {
		return nil, err
	}
	return p, nil
}

func waitHTTP(ctx context.Context, p *Proc, url string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	c := &http.Client{Timeout: time.Second}
	for time.Now().Before(deadline) && ctx.Err() == nil {
		select {
		case <-p.done:
			return fmt.Errorf("%s exited before it was ready; see %s:\n%s", p.Name, p.log, tail(p.log))
		default:
		}
		if resp, err := c.Get(url); err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("%s: %s not ready within %v; see %s:\n%s", p.Name, url, timeout, p.log, tail(p.log))
}

func tail(path string) string {
	b, _ := os.ReadFile(path)
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(b)
}

// Stop ends one process: SIGTERM, then SIGKILL after grace.
func (p *Proc) Stop(grace time.Duration) {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// Stop ends every process, newest first.
func (s *Stack) Stop() {
	for i := len(s.procs) - 1; i >= 0; i-- {
		s.procs[i].Stop(15 * time.Second)
	}
	s.procs = nil
}
