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
