// Package procstat reads a process's CPU time and memory from /proc (Linux), the resource
// counts the benchmark reports because machine noise barely moves them.
package procstat

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// clockTick is USER_HZ, 100 on every Linux architecture Go supports.
const clockTick = 100

// CPU returns the user+system CPU time consumed so far by pid (all threads).
func CPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) is in parentheses and may contain spaces: skip past it.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("procstat: malformed stat for %d", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	// After the name: state is field 3, so utime (14) and stime (15) are at f[11], f[12].
	if len(f) < 13 {
		return 0, fmt.Errorf("procstat: short stat for %d", pid)
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("procstat: bad cpu fields for %d", pid)
	}
	return time.Duration(ut+st) * time.Second / clockTick, nil
}

// Memory returns the current resident set (VmRSS) and its peak (VmHWM), in bytes.
func Memory(pid int) (rss, hwm int64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		switch k {
		case "VmRSS", "VmHWM":
			n, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				return 0, 0, fmt.Errorf("procstat: %s: %w", k, err)
			}
			if k == "VmRSS" {
				rss = n * 1024
			} else {
				hwm = n * 1024
			}
		}
	}
	return rss, hwm, nil
}

// stat holds the fields of /proc/<pid>/stat the benchmark reads.
type stat struct {
	ppid           int
	utime, stime   int64 // this process's own CPU, in clock ticks
	cutime, cstime int64 // CPU of its children it has waited for
	name           string
}

func readStat(pid int) (stat, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return stat{}, err
	}
	// The command name (field 2) is in parentheses and may contain spaces: skip past it.
	open, i := bytes.IndexByte(b, '('), bytes.LastIndexByte(b, ')')
	if open < 0 || i < open {
		return stat{}, fmt.Errorf("procstat: malformed stat for %d", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	// After the name: state is field 3 (f[0]), ppid 4 (f[1]), utime 14 (f[11]), stime 15,
	// cutime 16, cstime 17 (f[14]).
	if len(f) < 15 {
		return stat{}, fmt.Errorf("procstat: short stat for %d", pid)
	}
	var s stat
	s.name = string(b[open+1 : i])
	var errs [5]error
	s.ppid, errs[0] = strconv.Atoi(f[1])
	s.utime, errs[1] = strconv.ParseInt(f[11], 10, 64)
	s.stime, errs[2] = strconv.ParseInt(f[12], 10, 64)
	s.cutime, errs[3] = strconv.ParseInt(f[13], 10, 64)
	s.cstime, errs[4] = strconv.ParseInt(f[14], 10, 64)
	for _, err := range errs {
		if err != nil {
			return stat{}, fmt.Errorf("procstat: bad stat fields for %d: %w", pid, err)
		}
	}
	return s, nil
}

// Parent returns pid's parent process id and pid's command name.
func Parent(pid int) (ppid int, name string, err error) {
	s, err := readStat(pid)
	if err != nil {
		return 0, "", err
	}
	return s.ppid, s.name, nil
}

// TreeCPU returns the CPU time (user+system) consumed so far by pid and all its descendants:
// the live ones, and those that exited and were waited for (their time is in their parent's
// cutime/cstime). It is how a forking server is measured, such as PostgreSQL (the postmaster
// and one backend per connection). A process that exits between the directory scan and the
// read of its parent may be missed or counted twice: a few clock ticks at most. An error
// reading pid itself is returned; descendants that vanished during the scan are skipped.
func TreeCPU(pid int) (time.Duration, error) {
	root, err := readStat(pid)
	if err != nil {
		return 0, err
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return 0, err
	}
	children := map[int][]int{}
	stats := map[int]stat{pid: root}
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil || p == pid {
			continue
		}
		s, err := readStat(p)
		if err != nil {
			continue // exited meanwhile, or not a process directory
		}
		stats[p] = s
		children[s.ppid] = append(children[s.ppid], p)
	}
	var ticks int64
	queue := []int{pid}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		s := stats[p]
		ticks += s.utime + s.stime + s.cutime + s.cstime
		queue = append(queue, children[p]...)
	}
	return time.Duration(ticks) * time.Second / clockTick, nil
}
