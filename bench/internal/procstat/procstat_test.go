package procstat

import (
	"os"
	"os/exec"
	"testing"
	"time"
)

func TestSelf(t *testing.T) {
	pid := os.Getpid()
	before, err := CPU(pid)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(50 * time.Millisecond)
	x := 0
	for time.Now().Before(deadline) {
		x++
	}
	after, err := CPU(pid)
	if err != nil {
		t.Fatal(err)
	}
	if after < before {
		t.Errorf("cpu went backwards: %v → %v", before, after)
	}
	rss, hwm, err := Memory(pid)
	if err != nil || rss <= 0 || hwm < rss {
		t.Errorf("rss %d hwm %d err %v", rss, hwm, err)
	}
}

// TestTreeCPU: a child that burns CPU and exits is counted in its parent's tree.
func TestTreeCPU(t *testing.T) {
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh")
	}
	pid := os.Getpid()
	before, err := TreeCPU(pid)
	if err != nil {
		t.Fatal(err)
	}
	// The child spins for ~200 ms, then exits and is waited for.
	cmd := exec.Command(sh, "-c", `end=$(( $(date +%s%N) + 200000000 )); while [ $(date +%s%N) -lt $end ]; do :; done`)
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	after, err := TreeCPU(pid)
	if err != nil {
		t.Fatal(err)
	}
	// The child's CPU is what its parent waited for: the tree must have grown by as much
	// (clock ticks are 10 ms; our own CPU meanwhile only adds).
	child := cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	if d := after - before; d < child-20*time.Millisecond || child < 20*time.Millisecond {
		t.Errorf("tree CPU grew by %s after a child used %s", d, child)
	}
	own, err := CPU(pid)
	if err != nil || own > after {
		t.Errorf("own CPU %s (err %v) above tree CPU %s", own, err, after)
	}
	ppid, name, err := Parent(pid)
	if err != nil || ppid != os.Getppid() || name == "" {
		t.Errorf("Parent(self) = %d %q %v, want %d", ppid, name, err, os.Getppid())
	}
	if _, err := TreeCPU(1 << 30); err == nil {
		t.Error("TreeCPU of a missing process must fail")
	}
}
