package trainer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/maas-platform/maas/worker/internal/trainer/trainsim"
)

// The test binary doubles as the trainers it runs: "train-sim" is the simulated trainer
// (as `worker train-sim`), "helper-args" writes its arguments as JSON to $HELPER_OUT.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "train-sim":
			os.Exit(trainsim.Main(os.Args[2:], os.Stdout, os.Stderr))
		case "helper-run": // a worker that runs the trainer os.Args[2:] until killed
			_ = Run(context.Background(), Spec{Args: os.Args[2:]})
			os.Exit(0)
		case "helper-args":
			b, _ := json.Marshal(os.Args[2:])
			if err := os.WriteFile(os.Getenv("HELPER_OUT"), b, 0o644); err != nil {
				os.Exit(3)
			}
			os.Exit(0)
		}
	}
	os.Exit(m.Run())
}

func TestParseTemplate(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []string
		err  string
	}{
		{in: "python3 train.py --model {base_model} --out={output_dir}", want: []string{"python3", "train.py", "--model", "{base_model}", "--out={output_dir}"}},
		{in: `a 'b c' "d \"e\" $HOME" f\ g`, want: []string{"a", "b c", `d "e" $HOME`, "f g"}},
		{in: "a ''", want: []string{"a", ""}},
		{in: "  ", err: "empty command"},
		{in: "run {nope}", err: "unknown placeholder {nope}"},
		{in: "run {base_model", want: []string{"run", "{base_model"}},
		{in: `run '{"a":1}' {} {seed}`, want: []string{"run", `{"a":1}`, "{}", "{seed}"}},
		{in: "run 'x", err: "unterminated single quote"},
		{in: `run "x`, err: "unterminated double quote"},
	} {
		t.Run(tc.in, func(t *testing.T) {
			tpl, err := ParseTemplate(tc.in)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := tpl.Words(); strings.Join(got, "|") != strings.Join(tc.want, "|") {
				t.Errorf("words %q, want %q", got, tc.want)
			}
		})
	}
}

func TestTemplateArgs(t *testing.T) {
	tpl, err := ParseTemplate(`train --cfg='{"model":"{base_model}","r":{lora_rank}}' --lr={learning_rate_multiplier}x {validation_file}`)
	if err != nil {
		t.Fatal(err)
	}
	got := tpl.Args(map[string]string{"base_model": "org/m {seed}", "lora_rank": "8", "learning_rate_multiplier": "0.5"})
	want := []string{"train", `--cfg={"model":"org/m {seed}","r":8}`, "--lr=0.5x", ""}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("args %q, want %q (a value is not expanded again)", got, want)
	}
}

// A job's values stay one literal argument each: no shell ever sees them.
func TestRunNoShellInjection(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "args.json")
	tpl, err := NewTemplate([]string{os.Args[0], "helper-args", "{base_model}", "--seed={seed}", "{validation_file}", "{training_file}"})
	if err != nil {
		t.Fatal(err)
	}
	evil := map[string]string{
		"base_model":    "$(touch pwned)",
		"seed":          "1; touch pwned2",
		"training_file": "`touch pwned3` | cat && rm -rf . > x 'q' \"d\"\n$HOME",
	}
	if err := Run(context.Background(), Spec{Args: tpl.Args(evil), Dir: dir, Env: []string{"HELPER_OUT=" + out}}); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	if err := json.Unmarshal(raw, &got); err != nil {
		t.Fatal(err)
	}
	want := []string{evil["base_model"], "--seed=" + evil["seed"], "", evil["training_file"]}
	if strings.Join(got, "\x00") != strings.Join(want, "\x00") {
		t.Errorf("args %q, want %q", got, want)
	}
	for _, f := range []string{"pwned", "pwned2", "pwned3", "x"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err == nil {
			t.Errorf("%s was created: a value went through a shell", f)
		}
	}
}

func collect() (func(Progress), func() []Progress) {
	var mu sync.Mutex
	var ps []Progress
	return func(p Progress) { mu.Lock(); ps = append(ps, p); mu.Unlock() },
		func() []Progress { mu.Lock(); defer mu.Unlock(); return append([]Progress(nil), ps...) }
}

func sh(script string, args ...string) []string {
	return append([]string{"/bin/sh", "-c", script, "trainer"}, args...)
}

func TestRunProgress(t *testing.T) {
	on, got := collect()
	script := `
echo '{"message":"loading model"}'
echo 'plain log line'
printf 'epoch 1:  10%%\repoch 1: 100%%\n'
echo '{"step":1,"total_steps":4,"loss":2.5}'
echo '{"step":2,"total_steps":4,"train_loss":2.0,"valid_loss":2.2,"checkpoint":true}'
echo '{"step":3,"total_steps":4,"loss":1.5,"val_loss":1.7,"level":"ignored"}'
echo '{"message":"careful","level":"warning"}'
echo '{"unknown":1}'
printf '\377\376 bad bytes\n'
echo '{"trained_tokens":1234}'
echo
`
	if err := Run(context.Background(), Spec{Args: sh(script), OnProgress: on}); err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, p := range got() {
		switch {
		case p.Metric != nil:
			m := p.Metric
			s := fmt.Sprintf("metric %d/%d", m.Step, m.TotalSteps)
			if m.TrainLoss != nil {
				s += fmt.Sprintf(" loss=%v", *m.TrainLoss)
			}
			if m.ValidLoss != nil {
				s += fmt.Sprintf(" val=%v", *m.ValidLoss)
			}
			if p.Checkpoint {
				s += " checkpoint"
			}
			lines = append(lines, s)
		case p.Event != nil:
			lines = append(lines, fmt.Sprintf("event %s log=%v %s", p.Event.Level, p.Log, p.Event.Message))
		default:
			lines = append(lines, fmt.Sprintf("tokens %d", p.TrainedTokens))
		}
	}
	want := []string{
		"event info log=false loading model",
		"event info log=true plain log line",
		"event info log=true epoch 1: 100%",
		"metric 1/4 loss=2.5",
		"metric 2/4 loss=2 val=2.2 checkpoint",
		"metric 3/4 loss=1.5 val=1.7",
		"event warn log=false careful",
		`event info log=true {"unknown":1}`,
		"event info log=true \uFFFD bad bytes",
		"tokens 1234",
	}
	if strings.Join(lines, "\n") != strings.Join(want, "\n") {
		t.Errorf("progress:\n%s\nwant:\n%s", strings.Join(lines, "\n"), strings.Join(want, "\n"))
	}
}

// Log lines are bounded: MaxLogLines kept, the rest counted; a huge line is cut.
func TestRunBoundsLogLines(t *testing.T) {
	on, got := collect()
	script := `i=0; while [ $i -lt 250 ]; do echo "line $i"; i=$((i+1)); done; head -c 200000 /dev/zero | tr '\0' 'a'; echo; echo '{"step":1,"total_steps":1}'`
	if err := Run(context.Background(), Spec{Args: sh(script), OnProgress: on}); err != nil {
		t.Fatal(err)
	}
	ps := got()
	logs, metrics := 0, 0
	for _, p := range ps {
		if p.Log {
			logs++
			if len(p.Event.Message) > MaxLineBytes {
				t.Errorf("a log line of %d bytes", len(p.Event.Message))
			}
		}
		if p.Metric != nil {
			metrics++
		}
	}
	last := ps[len(ps)-1]
	if logs != MaxLogLines+1 || metrics != 1 || last.Event == nil || last.Event.Message != "51 more lines of trainer output not shown" {
		t.Errorf("%d log events, %d metrics, last %+v", logs, metrics, last.Event)
	}
}

// alive reports whether pid is a live process (a zombie, which PID 1 here may never reap,
// is not).
func alive(pid int) bool {
	if err := syscall.Kill(pid, 0); err != nil {
		return false
	}
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	s := string(stat)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}

// waitFile polls for a file the trainer writes (its grandchild's pid) and returns its text.
func waitFile(t *testing.T, path string) string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if b, err := os.ReadFile(path); err == nil && strings.HasSuffix(string(b), "\n") {
			return strings.TrimSpace(string(b))
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("%s not written", path)
	return ""
}

func waitGone(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for alive(pid) {
		if time.Now().After(deadline) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
			t.Fatalf("process %d still alive", pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestRunCancelKillsProcessGroup(t *testing.T) {
	for _, tc := range []struct {
		name   string
		script string
	}{
		// The shell and its child end on SIGTERM.
		{"sigterm", `sleep 300 & echo $! > "$1"; wait`},
		// Both ignore SIGTERM (an ignored signal is inherited): SIGKILL after the grace.
		{"sigkill after grace", `trap '' TERM; sleep 300 & echo $! > "$1"; while :; do wait; done`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pidFile := filepath.Join(t.TempDir(), "grandchild")
			ctx, cancel := context.WithCancelCause(context.Background())
			stopped := errors.New("cancelled by control")
			done := make(chan error, 1)
			go func() {
				done <- Run(ctx, Spec{Args: sh(tc.script, pidFile), StopGrace: 300 * time.Millisecond})
			}()
			pid, _ := strconv.Atoi(waitFile(t, pidFile))
			if !alive(pid) {
				t.Fatalf("grandchild %d not running", pid)
			}
			cancel(stopped)
			select {
			case err := <-done:
				if !errors.Is(err, stopped) {
					t.Errorf("err %v, want the cancel cause", err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("Run did not return after cancel")
			}
			waitGone(t, pid)
		})
	}
}

// A trainer that exits 0 leaving a process behind in its group: that process is killed.
func TestRunKillsLeftovers(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "grandchild")
	if err := Run(context.Background(), Spec{Args: sh(`sleep 300 > /dev/null 2>&1 & echo $! > "$1"`, pidFile)}); err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(waitFile(t, pidFile))
	waitGone(t, pid)
}

func TestRunTimeout(t *testing.T) {
	began := time.Now()
	err := Run(context.Background(), Spec{Args: sh(`exec sleep 300`), Timeout: 200 * time.Millisecond, StopGrace: time.Second})
	if !errors.Is(err, ErrTimeout) {
		t.Fatalf("err %v, want ErrTimeout", err)
	}
	if d := time.Since(began); d > 5*time.Second {
		t.Errorf("took %v", d)
	}
}

func TestRunCrashMessage(t *testing.T) {
	t.Run("last stderr lines, bounded, valid UTF-8", func(t *testing.T) {
		script := `i=0; while [ $i -lt 100 ]; do printf 'warning %03d %s\n' $i "$(head -c 80 /dev/zero | tr '\0' 'w')" >&2; i=$((i+1)); done
printf 'Traceback: \377 CUDA out of memory\n' >&2; echo '{"step":1,"total_steps":2}'; exit 3`
		err := Run(context.Background(), Spec{Args: sh(script)})
		var ce *CrashError
		if !errors.As(err, &ce) {
			t.Fatalf("err %v, want a CrashError", err)
		}
		if ce.Status != "status 3" || !strings.HasSuffix(ce.Tail, "Traceback: \uFFFD CUDA out of memory") ||
			len(ce.Tail) > maxTail || !utf8.ValidString(ce.Error()) || !strings.Contains(ce.Tail, "warning 099") || strings.Contains(ce.Tail, "warning 050") {
			t.Errorf("crash %q (%d bytes)", ce.Error(), len(ce.Tail))
		}
	})
	t.Run("stdout when stderr is empty", func(t *testing.T) {
		err := Run(context.Background(), Spec{Args: sh(`echo 'dataset has no assistant turn'; exit 1`)})
		if err == nil || err.Error() != "trainer exited with status 1: dataset has no assistant turn" {
			t.Errorf("err %v", err)
		}
	})
	t.Run("killed by a signal", func(t *testing.T) {
		err := Run(context.Background(), Spec{Args: sh(`kill -9 $$`)})
		if err == nil || !strings.Contains(err.Error(), "signal killed") {
			t.Errorf("err %v", err)
		}
	})
	t.Run("cannot start", func(t *testing.T) {
		err := Run(context.Background(), Spec{Args: []string{filepath.Join(t.TempDir(), "no-such-trainer")}})
		var ce *CrashError
		if err == nil || errors.As(err, &ce) || !strings.Contains(err.Error(), "start trainer") {
			t.Errorf("err %v", err)
		}
	})
}
