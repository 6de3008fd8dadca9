package trainer

import (
	"os/exec"
	"runtime"
	"syscall"
)

// procAttr puts the trainer in its own process group, so that stopping it reaches its
// children, and has the kernel SIGKILL it should the worker die without stopping it, so
// that no orphan trainer holds the GPU for a job control has given to another worker.
func procAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}

// startLocked starts cmd from a locked thread: Pdeathsig fires when the thread that
// started the child exits, and a thread a goroutine never locked is not ended by the Go
// runtime.
func startLocked(cmd *exec.Cmd) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	return cmd.Start()
}
