package supervise

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestRestartsAndStops(t *testing.T) {
	dir := t.TempDir()
	marker := filepath.Join(dir, "starts")
	o := DefaultOptions()
	o.MinBackoff, o.MaxBackoff = 10*time.Millisecond, 50*time.Millisecond
	o.StopGrace = 2 * time.Second
	// Each start appends a line, then the child sleeps (a long-running "engine").
	o.Command = "echo started >> " + marker + "; exec sleep 60"
	s, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	waitFor(t, "first start", func() bool { return s.Running() && s.PID() != 0 })
	first := s.PID()
	_ = syscall.Kill(first, syscall.SIGKILL) // the engine crashes
	waitFor(t, "restart", func() bool { return s.Restarts() == 1 && s.Running() && s.PID() != first })
	b, _ := os.ReadFile(marker)
	if n := strings.Count(string(b), "started"); n != 2 {
		t.Errorf("%d starts, want 2", n)
	}
	second := s.PID()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Error(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	if syscall.Kill(second, 0) == nil {
		t.Error("child still alive after stop")
	}
}
