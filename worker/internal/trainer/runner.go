package trainer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/maas-platform/maas/pkg/training"
)

// ErrTimeout is returned by Run when the trainer ran longer than its timeout.
var ErrTimeout = errors.New("trainer timed out")

// CrashError is a trainer that exited with a non-zero status or was killed by a signal
// nobody sent on purpose. Tail holds its last lines of standard error (or, when it wrote
// none, of its non-progress standard output), bounded and valid UTF-8.
type CrashError struct {
	Status string // "status 1", "signal killed"
	Tail   string
}

func (e *CrashError) Error() string {
	if e.Tail == "" {
		return "trainer exited with " + e.Status
	}
	return "trainer exited with " + e.Status + ": " + e.Tail
}

// Spec is one run of a trainer.
type Spec struct {
	Args []string // argv; Args[0] is looked up in PATH when it has no slash
	Dir  string   // working directory ("" = the worker's)
	Env  []string // extra KEY=VALUE entries appended to the worker's environment
	// Timeout ends the run with ErrTimeout (0 = none).
	Timeout time.Duration
	// StopGrace is how long the trainer has to exit after SIGTERM before its process group
	// gets SIGKILL (default 10 s).
	StopGrace time.Duration
	// OnProgress receives each line of standard output, parsed, in order, from one
	// goroutine. Log lines past MaxLogLines are counted and reported once at the end.
	OnProgress func(Progress)
	// Started, when set, is given the trainer's process group once it runs.
	Started func(pgid int)
	Logger  *slog.Logger
}

// MaxLogLines bounds the non-progress lines of standard output a run turns into events.
const MaxLogLines = 200

// tailLines and maxTail bound the standard error kept for a crash message.
const (
	tailLines = 20
	maxTail   = 1900 // control keeps 2000 bytes of a failure message
)

// Run starts the trainer in its own process group and waits for it. It returns nil when
// the trainer exits 0; ErrTimeout (wrapped) after Spec.Timeout; context.Cause(ctx) when ctx
// ends first (the whole process group is then stopped: SIGTERM, SIGKILL after StopGrace);
// a *CrashError when it fails on its own; another error when it cannot start. Processes the
// trainer left behind in its group are killed when it exits.
func Run(ctx context.Context, s Spec) error {
	if len(s.Args) == 0 {
		return errors.New("run trainer: empty command")
	}
	if s.StopGrace <= 0 {
		s.StopGrace = 10 * time.Second
	}
	log := s.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("run trainer: %w", err)
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		outR.Close()
		outW.Close()
		return fmt.Errorf("run trainer: %w", err)
	}
	cmd := exec.Command(s.Args[0], s.Args[1:]...)
	cmd.Dir = s.Dir
	cmd.Env = append(os.Environ(), s.Env...)
	cmd.Stdin = nil
	cmd.Stdout, cmd.Stderr = outW, errW
	cmd.SysProcAttr = procAttr()
	err = startLocked(cmd)
	outW.Close() // the child holds its own copies; EOF comes when the last holder exits
	errW.Close()
	if err != nil {
		outR.Close()
		errR.Close()
		return fmt.Errorf("start trainer %s: %w", s.Args[0], err)
	}
	pgid := cmd.Process.Pid
	log.Info("trainer started", "pid", pgid, "command", s.Args[0])
	if s.Started != nil {
		s.Started(pgid)
	}

	var wg sync.WaitGroup
	stderrTail := &tail{max: tailLines}
	stdoutTail := &tail{max: tailLines}
	wg.Add(2)
	go func() {
		defer wg.Done()
		logs, dropped := 0, 0
		readLines(outR, 64<<10, func(line []byte) {
			p, ok := ParseLine(line)
			if !ok {
				return
			}
			if p.Log {
				stdoutTail.add(p.Event.Message)
				if logs >= MaxLogLines {
					dropped++
					return
				}
				logs++
			}
			if s.OnProgress != nil {
				s.OnProgress(p)
			}
		})
		if dropped > 0 && s.OnProgress != nil {
			s.OnProgress(Progress{Event: &training.Event{Level: "warn",
				Message: fmt.Sprintf("%d more lines of trainer output not shown", dropped)}, Log: true})
		}
	}()
	go func() {
		defer wg.Done()
		readLines(errR, 64<<10, func(line []byte) {
			if t := CleanText(string(line), MaxLineBytes); t != "" {
				stderrTail.add(t)
				log.Debug(t, "source", "trainer", "stream", "stderr")
			}
		})
	}()

	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	var timeout <-chan time.Time
	if s.Timeout > 0 {
		t := time.NewTimer(s.Timeout)
		defer t.Stop()
		timeout = t.C
	}
	var werr, stopped error
	select {
	case werr = <-waited:
	case <-ctx.Done():
		stopped = context.Cause(ctx)
		werr = stop(pgid, waited, s.StopGrace, log)
	case <-timeout:
		stopped = fmt.Errorf("%w after %v", ErrTimeout, s.Timeout)
		werr = stop(pgid, waited, s.StopGrace, log)
	}
	// Whatever the trainer left in its group (a data loader, a shell's children) goes too;
	// then its pipes reach EOF.
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
	readersDone := make(chan struct{})
	go func() { wg.Wait(); close(readersDone) }()
	select {
	case <-readersDone:
	case <-time.After(5 * time.Second):
		// A process that left the group still holds the pipes: stop reading.
		log.Warn("trainer output still open after it exited; closing it", "pid", pgid)
		outR.Close()
		errR.Close()
		<-readersDone
	}
	outR.Close()
	errR.Close()
	if stopped != nil {
		return stopped
	}
	if werr == nil {
		return nil
	}
	var ee *exec.ExitError
	if !errors.As(werr, &ee) {
		return fmt.Errorf("wait for trainer: %w", werr)
	}
	status := fmt.Sprintf("status %d", ee.ExitCode())
	if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		status = "signal " + ws.Signal().String()
	}
	t := stderrTail.String()
	if t == "" {
		t = stdoutTail.String()
	}
	return &CrashError{Status: status, Tail: t}
}

// stop sends SIGTERM to the process group, then SIGKILL after grace.
func stop(pgid int, waited <-chan error, grace time.Duration, log *slog.Logger) error {
	_ = syscall.Kill(-pgid, syscall.SIGTERM)
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case err := <-waited:
		return err
	case <-t.C:
		log.Warn("trainer did not stop after SIGTERM; killing its process group", "pid", pgid, "grace", grace)
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		return <-waited
	}
}

// tail keeps the last max lines; safe for concurrent use.
type tail struct {
	mu    sync.Mutex
	max   int
	lines []string
}

func (t *tail) add(s string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.lines) == t.max {
		t.lines = append(t.lines[:0], t.lines[1:]...)
	}
	t.lines = append(t.lines, s)
}

// String joins the kept lines, dropping the oldest until the text fits in maxTail bytes.
func (t *tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	lines := t.lines
	for len(lines) > 1 && len(strings.Join(lines, "\n")) > maxTail {
		lines = lines[1:]
	}
	return truncate(strings.Join(lines, "\n"), maxTail)
}
