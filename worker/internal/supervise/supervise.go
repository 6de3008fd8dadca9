// Package supervise runs an engine as a child process: it starts the command in its own
// process group, forwards its output to the log, restarts it with exponential backoff when
// it exits, and stops it (SIGTERM to the group, then SIGKILL) on shutdown.
package supervise

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os/exec"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Options configures a Supervisor.
type Options struct {
	Command     string        // run with /bin/sh -c
	MinBackoff  time.Duration // first restart delay
	MaxBackoff  time.Duration // delay cap
	StableAfter time.Duration // a run this long resets the backoff
	StopGrace   time.Duration // SIGTERM → SIGKILL
	Logger      *slog.Logger
	// OnRestart is called each time the child is started again after an exit.
	OnRestart func()
}

// DefaultOptions restarts after 500ms, doubling up to 30s.
func DefaultOptions() Options {
	return Options{MinBackoff: 500 * time.Millisecond, MaxBackoff: 30 * time.Second, StableAfter: 30 * time.Second, StopGrace: 10 * time.Second}
}

// Supervisor owns the child process. Run it once; it is safe for concurrent use.
type Supervisor struct {
	o        Options
	running  atomic.Bool
	restarts atomic.Int64
	mu       sync.Mutex
	cmd      *exec.Cmd
}

// New returns a supervisor for o.Command.
func New(o Options) (*Supervisor, error) {
	if o.Command == "" {
		return nil, errors.New("supervise: empty command")
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return &Supervisor{o: o}, nil
}

// Running reports whether the child process is alive.
func (s *Supervisor) Running() bool { return s.running.Load() }

// Restarts is how many times the child was started again.
func (s *Supervisor) Restarts() int64 { return s.restarts.Load() }

// PID of the current child, 0 when none.
func (s *Supervisor) PID() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil || s.cmd.Process == nil {
		return 0
	}
	return s.cmd.Process.Pid
}

// Run starts the child and keeps it running until ctx ends, then stops it and returns.
func (s *Supervisor) Run(ctx context.Context) error {
	backoff := s.o.MinBackoff
	for first := true; ; first = false {
		if !first {
			s.restarts.Add(1)
			if s.o.OnRestart != nil {
				s.o.OnRestart()
			}
		}
		began := time.Now()
		err := s.runOnce(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if time.Since(began) >= s.o.StableAfter {
			backoff = s.o.MinBackoff
		}
		s.o.Logger.Warn("engine process exited; restarting", "err", err, "backoff", backoff)
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		backoff = min(2*backoff, s.o.MaxBackoff)
	}
}

func (s *Supervisor) runOnce(ctx context.Context) error {
	cmd := exec.Command("/bin/sh", "-c", s.o.Command)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return fmt.Errorf("engine stdout: %w", err)
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return fmt.Errorf("engine stderr: %w", err)
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start engine: %w", err)
	}
	s.mu.Lock()
	s.cmd = cmd
	s.mu.Unlock()
	s.running.Store(true)
	s.o.Logger.Info("engine process started", "pid", cmd.Process.Pid)
	var wg sync.WaitGroup
	wg.Add(2)
	go s.forward(&wg, stdout, "stdout")
	go s.forward(&wg, stderr, "stderr")
	done := make(chan error, 1)
	go func() {
		wg.Wait() // pipes first: Wait closes them
		done <- cmd.Wait()
	}()
	select {
	case err = <-done:
	case <-ctx.Done():
		err = s.stop(cmd, done)
	}
	s.running.Store(false)
	return err
}

// stop sends SIGTERM to the child's process group, then SIGKILL after StopGrace.
func (s *Supervisor) stop(cmd *exec.Cmd, done <-chan error) error {
	pgid := cmd.Process.Pid
	_ = syscall.Kill(-pgid, syscall.SIGTERM)
	t := time.NewTimer(s.o.StopGrace)
	defer t.Stop()
	select {
	case err := <-done:
		return err
	case <-t.C:
		s.o.Logger.Warn("engine did not stop in time; killing", "pid", pgid)
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		return <-done
	}
}

func (s *Supervisor) forward(wg *sync.WaitGroup, r io.Reader, stream string) {
	defer wg.Done()
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		s.o.Logger.Info(sc.Text(), "source", "engine", "stream", stream)
	}
}
