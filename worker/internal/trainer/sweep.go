package trainer

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// A job's work directory records who uses it, so that a worker started after another one
// died (SIGKILL, OOM, power loss: no deferred clean-up ran) can clean up after it, even in
// a work directory shared by several workers (the system's temporary directory by default):
//
//   - ownerFile: the pid of the worker that made the directory;
//   - pgidFile: the trainer's process group, once started.
//
// At start, a worker removes each maas-* directory whose owner is no longer running, after
// SIGKILLing the trainer's process group when processes of that group still run in the
// directory (a trainer's children outlive a killed worker: Pdeathsig reaches only the
// trainer itself). Directories of running workers, and those without an owner file, are
// left alone.
const (
	ownerFile = ".maas-worker.pid"
	pgidFile  = ".maas-trainer.pgid"
)

// workDirPrefix starts the name of each job's work directory.
const workDirPrefix = "maas-"

// sweep removes the job directories in dir that workers no longer running left behind,
// killing what their trainers left running. It returns how many it removed.
func sweep(dir string, log *slog.Logger) int {
	if dir == "" {
		dir = os.TempDir()
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return 0
	}
	removed := 0
	for _, e := range entries {
		if !e.IsDir() || !strings.HasPrefix(e.Name(), workDirPrefix) {
			continue
		}
		job := filepath.Join(dir, e.Name())
		owner, err := readInt(filepath.Join(job, ownerFile))
		if err != nil || owner == os.Getpid() || running(owner) {
			continue
		}
		killed := 0
		if pgid, err := readInt(filepath.Join(job, pgidFile)); err == nil && pgid > 1 {
			if n := groupIn(pgid, job); n > 0 {
				_ = syscall.Kill(-pgid, syscall.SIGKILL)
				killed = n
			}
		}
		if err := os.RemoveAll(job); err != nil {
			log.Warn("work directory of a stopped worker not removed", "dir", job, "err", err)
			continue
		}
		removed++
		log.Warn("work directory of a worker that died removed", "dir", job, "worker_pid", owner, "trainer_processes_killed", killed)
	}
	return removed
}

func readInt(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

func writeInt(path string, n int) error {
	return os.WriteFile(path, []byte(strconv.Itoa(n)+"\n"), 0o644)
}

// running reports whether process pid exists (a process of another user counts).
func running(pid int) bool {
	if pid <= 0 {
		return false
	}
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// groupIn counts the processes of group pgid whose working directory lies in dir (read
// from /proc: 0 where there is none). The directory check keeps a group id reused by an
// unrelated program from being killed.
func groupIn(pgid int, dir string) int {
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return 0
	}
	n := 0
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		// pid (comm) state ppid pgrp …; comm may hold spaces and parentheses.
		i := strings.LastIndexByte(string(stat), ')')
		f := strings.Fields(string(stat[i+1:]))
		if i < 0 || len(f) < 3 || f[2] != strconv.Itoa(pgid) {
			continue
		}
		cwd, err := os.Readlink(fmt.Sprintf("/proc/%d/cwd", pid))
		if err == nil && (cwd == dir || strings.HasPrefix(cwd, dir+string(filepath.Separator))) {
			n++
		}
	}
	return n
}
