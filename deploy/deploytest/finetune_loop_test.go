package deploytest

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/maas-platform/maas/pkg/testenv"
)

// The fine-tuning walkthrough README shows ("Fine-tune a model on the simulator"): each
// file is one of its code blocks, run as it is by TestMakeRunFineTuneLoop.
var walkthrough = []struct{ lang, path string }{
	{"sh", "sdktest/walkthrough/finetune.sh"},
	{"python", "sdktest/python/finetune_walkthrough.py"},
	{"js", "sdktest/node/finetune-walkthrough.mjs"},
}

// walkthroughEnv is README's first block of the walkthrough: where the snippets find the
// gateway and the key `make run` printed (the gateway's address is run.sh's default).
const walkthroughEnv = "export OPENAI_BASE_URL=http://127.0.0.1:8000/v1 OPENAI_API_KEY=sk-…   # the key make run printed"

// TestMakeRunFineTuneLoop runs deploy/local/run.sh — what `make run` runs — on a fresh
// database and free ports, in a copy of the repository's layout (the script and its
// services.sh, bin/ holding the binaries just built), then the walkthrough as README shows
// it: upload a chat dataset, fine-tune sim-chat on the simulated trainer, watch the job, chat
// with ft:sim-chat:demo:<job> streamed and not — with curl, then with the official Node
// client. Then Ctrl-C (SIGINT to the script's process group, as a terminal sends it): every
// process stops, the serving worker deregistered while control was still up.
func TestMakeRunFineTuneLoop(t *testing.T) {
	if testing.Short() {
		t.Skip("runs make run's script and the walkthrough")
	}
	for _, tool := range []string{"bash", "curl", "jq", "setsid"} {
		requireTool(t, tool, "apt-get install -y "+tool)
	}
	p := testenv.NewPlatform(t, testenv.Options{Redis: true})

	// A tree shaped like the repository: run.sh cds to ../.. of itself and runs bin/*.
	root := t.TempDir()
	local := filepath.Join(root, "deploy", "local")
	if err := os.MkdirAll(local, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"run.sh", "services.sh"} {
		b, err := os.ReadFile(deployPath(t, "local", name))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(local, name), b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(filepath.Dir(p.Bin.Worker), filepath.Join(root, "bin")); err != nil {
		t.Fatal(err)
	}

	addr := map[string]string{}
	env := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME"), "TMPDIR=" + os.TempDir(),
		"MAAS_DATABASE_URL=" + p.DBURL, "MAAS_REDIS_URL=" + p.RedisURL, "MAAS_BOOTSTRAP_ADMIN_PASSWORD=" + p.AdminPassword}
	for _, name := range []string{"MAAS_CONTROL_ADDR", "MAAS_GATEWAY_ADDR", "MAAS_WORKER_ADDR", "MAAS_SIM_ADDR", "MAAS_TRAINER_ADDR"} {
		addr[name] = testenv.FreeAddr(t)
		env = append(env, name+"="+addr[name])
	}
	run := startScript(t, root, env)

	// Up: the startup output names the simulated trainer and the LoRA slots, and gives a key.
	out := run.waitFor(t, "Ctrl-C stops everything", 90*time.Second)
	for _, want := range []string{"the SIMULATED trainer (no model is trained)", "with 8 LoRA adapter slots",
		"registered sim-chat in the model registry", "trainer ready on http://" + addr["MAAS_TRAINER_ADDR"],
		"(cd .data && bash ../deploy/sdktest/walkthrough/finetune.sh)"} {
		if !strings.Contains(out, want) {
			t.Errorf("make run's output lacks %q", want)
		}
	}
	m := regexp.MustCompile(`\(shown once\): (sk-\S+)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no key in make run's output:\n%s", out)
	}
	walkEnv := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME"),
		"OPENAI_BASE_URL=http://" + addr["MAAS_GATEWAY_ADDR"] + "/v1", "OPENAI_API_KEY=" + m[1]}
	work := t.TempDir()

	// curl, as README shows it (and as make run's output suggests).
	start := time.Now()
	got := runWalkthrough(t, work, walkEnv, "bash", deployPath(t, walkthrough[0].path))
	t.Logf("curl walkthrough: %v", time.Since(start).Round(time.Millisecond))
	model := checkWalkthrough(t, "curl", got)
	if !regexp.MustCompile(`(?m)^data: \{.*"model":"`+regexp.QuoteMeta(model)+`".*"content":"\S`).MatchString(got) ||
		!strings.Contains(got, "data: [DONE]") {
		t.Errorf("curl: no stream from %s:\n%s", model, got)
	}

	// The official Node client, same steps.
	if node, err := exec.LookPath("node"); err == nil || os.Getenv("CI") != "" {
		if err != nil {
			t.Fatalf("node is required under CI: %v", err)
		}
		npmCI(t)
		start = time.Now()
		got = runWalkthrough(t, work, walkEnv, node, deployPath(t, walkthrough[2].path))
		t.Logf("Node walkthrough: %v", time.Since(start).Round(time.Millisecond))
		// The streamed answer is the non-streamed one (the simulator answers a prompt alike),
		// on a line of its own.
		model := checkWalkthrough(t, "node", got)
		answer := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(model) + `: (.+)$`).FindStringSubmatch(got)[1]
		if !regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(answer) + `$`).MatchString(got) {
			t.Errorf("node: no streamed answer:\n%s", got)
		}
	} else {
		t.Log("node not installed: the Node walkthrough was not run")
	}

	// Ctrl-C: SIGINT to the script's process group, as a terminal sends it.
	run.interrupt(t)
	out = run.output()
	if !strings.Contains(out, "stopped; data kept in .data/") {
		t.Errorf("make run did not report a clean stop:\n%s", out)
	}
	for name, a := range addr {
		if c, err := (&net.Dialer{Timeout: time.Second}).Dial("tcp", a); err == nil {
			c.Close()
			t.Errorf("%s %s still listening after Ctrl-C", name, a)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, p.DBURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var backends int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM backends`).Scan(&backends); err != nil {
		t.Fatal(err)
	}
	if backends != 0 {
		t.Errorf("%d backends left in the registry after Ctrl-C: the worker did not deregister before control stopped", backends)
	}
}

// checkWalkthrough checks a walkthrough's output (the job succeeded, the fine-tuned model
// answered as itself) and returns the model's name.
func checkWalkthrough(t *testing.T, who, out string) string {
	t.Helper()
	if !regexp.MustCompile(`(?m)^succeeded: The job has successfully completed$`).MatchString(out) {
		t.Fatalf("%s: the job did not succeed:\n%s", who, out)
	}
	m := regexp.MustCompile(`(?m)^(ft:sim-chat:demo:ftjob-\w+): \S`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("%s: the fine-tuned model did not answer:\n%s", who, out)
	}
	return m[1]
}

func runWalkthrough(t *testing.T, dir string, env []string, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir, cmd.Env = dir, env
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// npmCI installs the Node suite's pinned client when it is not installed yet.
func npmCI(t *testing.T) {
	t.Helper()
	dir := deployPath(t, "sdktest", "node")
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "openai", "package.json")); err == nil {
		return
	}
	npm := requireTool(t, "npm", "apt-get install -y npm")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	ci := exec.CommandContext(ctx, npm, "ci", "--no-audit", "--no-fund", "--loglevel=error")
	ci.Dir = dir
	if out, err := ci.CombinedOutput(); err != nil {
		t.Fatalf("npm ci: %v\n%s", err, out)
	}
}

// script is run.sh running in its own process group, as in a terminal.
type script struct {
	cmd  *exec.Cmd
	out  *lockedBuffer
	done chan struct{}
}

func startScript(t *testing.T, root string, env []string) *script {
	t.Helper()
	cmd := exec.Command("bash", "deploy/local/run.sh")
	cmd.Dir, cmd.Env = root, env
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	s := &script{cmd: cmd, out: &lockedBuffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = s.out, s.out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		_ = cmd.Wait()
		close(s.done)
	}()
	t.Cleanup(func() {
		select {
		case <-s.done:
		default:
			// The test failed before Ctrl-C: stop it as Ctrl-C would, then by force, its
			// children too (they run in their own sessions).
			children := childPIDs(cmd.Process.Pid)
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGINT)
			select {
			case <-s.done:
			case <-time.After(45 * time.Second):
				_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
				for _, pid := range children {
					_ = syscall.Kill(pid, syscall.SIGKILL)
				}
				<-s.done
			}
		}
		if t.Failed() {
			t.Logf("--- make run's output ---\n%s", s.output())
		}
	})
	return s
}

func (s *script) output() string { return s.out.String() }

// waitFor waits until the output contains text; it fails if the script exits first.
func (s *script) waitFor(t *testing.T, text string, timeout time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		out := s.output()
		if strings.Contains(out, text) {
			return out
		}
		select {
		case <-s.done:
			t.Fatalf("make run exited (%v) before printing %q", s.cmd.ProcessState, text)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("make run did not print %q within %v", text, timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// interrupt sends SIGINT to the script's process group and waits for it to exit.
func (s *script) interrupt(t *testing.T) {
	t.Helper()
	start := time.Now()
	if err := syscall.Kill(-s.cmd.Process.Pid, syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case <-s.done:
		t.Logf("Ctrl-C: everything stopped in %v", time.Since(start).Round(time.Millisecond))
	case <-time.After(45 * time.Second):
		t.Fatal("make run still running 45 s after Ctrl-C")
	}
}

// childPIDs lists the processes whose parent is pid (Linux /proc).
func childPIDs(pid int) []int {
	entries, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range entries {
		n, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid …: comm may hold spaces, so read after its closing parenthesis.
		f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
		if len(f) > 1 && f[1] == strconv.Itoa(pid) {
			out = append(out, n)
		}
	}
	return out
}

// TestFineTuneWalkthroughDocumented checks that README's walkthrough "Fine-tune a model on
// the simulator" is what TestMakeRunFineTuneLoop runs, and that the Python snippet, which
// no test can run here (no Python SDK installs), at least parses.
func TestFineTuneWalkthroughDocumented(t *testing.T) {
	readme, err := os.ReadFile(filepath.Join(repoRoot(t), "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	run, err := os.ReadFile(deployPath(t, "local", "run.sh"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(run), `MAAS_GATEWAY_ADDR="${MAAS_GATEWAY_ADDR:-127.0.0.1:8000}"`) {
		t.Error("run.sh's default gateway address is no longer the walkthrough's 127.0.0.1:8000")
	}
	checkWalkthroughDoc(t, string(readme))
	if py, err := exec.LookPath("python3"); err == nil {
		cmd := exec.Command(py, "-c", "import ast, sys; ast.parse(open(sys.argv[1]).read(), sys.argv[1])", deployPath(t, walkthrough[1].path))
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("%s does not parse: %v\n%s", walkthrough[1].path, err, out)
		}
	}
}

// checkWalkthroughDoc checks that the walkthrough section of readme has, as its code
// blocks, the block exporting the gateway's address and the key, then the walkthrough
// files verbatim.
func checkWalkthroughDoc(t *testing.T, readme string) {
	t.Helper()
	section := markdownSection(readme, "Fine-tune a model on the simulator")
	if section == "" {
		t.Fatal(`README has no section "Fine-tune a model on the simulator" (its text is in the report of the change that added deploy/sdktest/walkthrough)`)
	}
	blocks := fencedBlocks(section)
	want := [][2]string{{"sh", walkthroughEnv + "\n"}}
	for _, w := range walkthrough {
		b, err := os.ReadFile(deployPath(t, w.path))
		if err != nil {
			t.Fatal(err)
		}
		want = append(want, [2]string{w.lang, string(b)})
	}
	if len(blocks) != len(want) {
		t.Fatalf("README's walkthrough has %d code blocks, want %d (the export line, then %s, %s, %s)", len(blocks), len(want),
			walkthrough[0].path, walkthrough[1].path, walkthrough[2].path)
	}
	for i, w := range want {
		if blocks[i] != w {
			t.Errorf("README's walkthrough block %d is not the tested one:\n--- README (%s) ---\n%s--- want (%s) ---\n%s",
				i+1, blocks[i][0], blocks[i][1], w[0], w[1])
		}
	}
}

// markdownSection returns the text under the heading whose title is title, up to the next
// heading of the same or a higher level ("" when there is none).
func markdownSection(doc, title string) string {
	lines := strings.SplitAfter(doc, "\n")
	level := 0
	var b strings.Builder
	fence := false
	for _, l := range lines {
		if strings.HasPrefix(l, "```") {
			fence = !fence
		}
		h := 0
		if !fence {
			for h < len(l) && l[h] == '#' {
				h++
			}
		}
		if h > 0 && h < len(l) && l[h] == ' ' {
			if level > 0 && h <= level {
				break
			}
			if level == 0 && strings.TrimSpace(l[h:]) == title {
				level = h
				continue
			}
		}
		if level > 0 {
			b.WriteString(l)
		}
	}
	return b.String()
}

// fencedBlocks returns the ``` blocks of a Markdown text: language and content.
func fencedBlocks(doc string) [][2]string {
	var out [][2]string
	var cur *[2]string
	for _, l := range strings.SplitAfter(doc, "\n") {
		switch {
		case cur == nil && strings.HasPrefix(l, "```"):
			cur = &[2]string{strings.TrimSpace(strings.TrimPrefix(l, "```")), ""}
		case cur != nil && strings.TrimSpace(l) == "```":
			out = append(out, *cur)
			cur = nil
		case cur != nil:
			cur[1] += l
		}
	}
	return out
}

// lockedBuffer is a strings.Builder safe for concurrent writes and reads.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
