package deploytest

import (
	"context"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/maas-platform/maas/pkg/testenv"
)

// deployedCommands lists the command lines (binary first) that the Dockerfile, the Compose
// file and the Kubernetes manifests run with the platform's image, by where.
func deployedCommands(t *testing.T) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	docker, err := os.ReadFile(deployPath(t, "docker", "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	if m := regexp.MustCompile(`(?m)^CMD (\[.*\])$`).FindSubmatch(docker); m != nil {
		var cmd []string
		if err := yaml.Unmarshal(m[1], &cmd); err != nil {
			t.Fatalf("Dockerfile CMD: %v", err)
		}
		out["Dockerfile CMD"] = cmd
	} else {
		t.Error("Dockerfile has no exec-form CMD")
	}
	raw, err := os.ReadFile(deployPath(t, "compose", "docker-compose.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var compose struct {
		Services map[string]struct {
			Command []string `json:"command"`
		} `json:"services"`
	}
	if err := yaml.Unmarshal(raw, &compose); err != nil {
		t.Fatal(err)
	}
	for name, svc := range compose.Services {
		if len(svc.Command) > 0 && binaries[svc.Command[0]] {
			out["docker-compose.yml service "+name] = svc.Command
		}
	}
	m := loadManifests(t)
	for where, pod := range m.podSpecs() {
		for _, c := range append(append([]corev1.Container(nil), pod.Spec.InitContainers...), pod.Spec.Containers...) {
			if c.Image == maasImage {
				out[where+"/"+c.Name] = append(append([]string(nil), c.Command...), c.Args...)
			}
		}
	}
	return out
}

// TestDeployedCommandsParse runs the real binaries with the flags the deployment files pass
// (plus -h, which parses every flag before it and exits 0), and checks control's
// subcommands against its own usage text: a renamed flag or subcommand fails here, not in
// a cluster.
func TestDeployedCommandsParse(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binaries")
	}
	bin := testenv.Build(t)
	path := map[string]string{"gateway": bin.Gateway, "control": bin.Control, "worker": bin.Worker}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	usage, err := exec.CommandContext(ctx, bin.Control, "help").Output()
	if err != nil {
		t.Fatalf("control help: %v", err)
	}
	cmds := deployedCommands(t)
	if len(cmds) < 8 {
		t.Fatalf("found %d deployed commands; the collection is broken", len(cmds))
	}
	for where, cmd := range cmds {
		if len(cmd) == 0 || path[cmd[0]] == "" {
			t.Errorf("%s: %q does not run gateway, control or worker", where, cmd)
			continue
		}
		args := cmd[1:]
		if cmd[0] == "control" && len(args) > 0 && !strings.HasPrefix(args[0], "-") {
			// A subcommand (and its words) must be in control's usage.
			var words []string
			for _, a := range args {
				if strings.HasPrefix(a, "-") {
					break
				}
				words = append(words, a)
			}
			if !regexp.MustCompile(`(?m)^\s+` + regexp.QuoteMeta(strings.Join(words, " ")) + `\s`).Match(usage) {
				t.Errorf("%s: control has no subcommand %q", where, strings.Join(words, " "))
			}
			continue
		}
		run := exec.CommandContext(ctx, path[cmd[0]], append(append([]string(nil), args...), "-h")...)
		run.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.TempDir()}
		run.Dir = t.TempDir()
		if out, err := run.CombinedOutput(); err != nil {
			t.Errorf("%s: %s %s rejects its flags: %v\n%s", where, cmd[0], strings.Join(args, " "), err, out)
		}
	}
}
