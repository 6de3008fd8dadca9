//go:build !linux

package trainer

import (
	"os/exec"
	"syscall"
)

// procAttr puts the trainer in its own process group, so that stopping it reaches its
// children. (Only Linux can also kill it when the worker dies.)
func procAttr() *syscall.SysProcAttr { return &syscall.SysProcAttr{Setpgid: true} }

func startLocked(cmd *exec.Cmd) error { return cmd.Start() }
