package trainer

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
)

// A worker killed with SIGKILL cannot stop its trainer: the kernel kills the trainer
// (Pdeathsig), even one that writes nothing (no SIGPIPE to end it).
func TestTrainerDiesWithWorker(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "trainer")
	worker := exec.Command(os.Args[0], "helper-run", "/bin/sh", "-c", `echo $$ > "$1"; exec sleep 300`, "trainer", pidFile)
	if err := worker.Start(); err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(waitFile(t, pidFile))
	if !alive(pid) {
		t.Fatalf("trainer %d not running", pid)
	}
	_ = worker.Process.Kill()
	_ = worker.Wait()
	waitGone(t, pid)
}
