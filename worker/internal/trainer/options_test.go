package trainer

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/maas-platform/maas/pkg/config"
)

func TestFlagsOptions(t *testing.T) {
	for _, tc := range []struct {
		name string
		env  []string
		err  string
		args []string // the template's words, when valid
	}{
		{name: "sim", env: []string{"MAAS_TRAINER_COMMAND=sim"}, args: []string{"train-sim", "--base-model", "{base_model}"}},
		{name: "template", env: []string{"MAAS_TRAINER_COMMAND=python3 train.py --model {base_model}"}, args: []string{"python3", "train.py", "--model", "{base_model}"}},
		{name: "unknown placeholder", env: []string{"MAAS_TRAINER_COMMAND=train {epochs}"}, err: "MAAS_TRAINER_COMMAND: unknown placeholder {epochs}"},
		{name: "slots must divide", env: []string{"MAAS_TRAINER_COMMAND=sim", "MAAS_TRAINER_GPUS=4", "MAAS_TRAINER_GPUS_PER_JOB=3"}, err: "MAAS_TRAINER_GPUS_PER_JOB: must divide"},
		{name: "devices listed", env: []string{"MAAS_TRAINER_COMMAND=sim", "MAAS_TRAINER_GPUS=4", "MAAS_TRAINER_GPUS_PER_JOB=2", "CUDA_VISIBLE_DEVICES=0,1"}, err: "4 GPUs declared but CUDA_VISIBLE_DEVICES lists 2"},
		{name: "poll interval", env: []string{"MAAS_TRAINER_COMMAND=sim", "MAAS_TRAINER_POLL_INTERVAL=1ms"}, err: "MAAS_TRAINER_POLL_INTERVAL"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("CUDA_VISIBLE_DEVICES", "")
			for _, kv := range tc.env {
				k, v, _ := strings.Cut(kv, "=")
				t.Setenv(k, v)
			}
			l, err := config.NewLoader("test", t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			var f Flags
			f.Bind(l)
			if err := l.Parse(nil); err != nil {
				t.Fatal(err)
			}
			o, err := f.Options("http://127.0.0.1:1", testToken, nil)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			words := o.Command.Words()
			if tc.name == "sim" {
				words = words[1:] // the worker binary's own path
			}
			if strings.Join(words[:len(tc.args)], " ") != strings.Join(tc.args, " ") {
				t.Errorf("command %q", o.Command.Words())
			}
		})
	}
}

// A relative MAAS_TRAINER_WORK_DIR is made absolute: the trainer runs in its job's
// directory, where a relative dataset path would not resolve (make run passed one).
func TestFlagsOptionsWorkDirAbsolute(t *testing.T) {
	t.Setenv("CUDA_VISIBLE_DEVICES", "")
	t.Setenv("MAAS_TRAINER_COMMAND", "sim")
	t.Setenv("MAAS_TRAINER_WORK_DIR", "rel/trainer")
	l, err := config.NewLoader("test", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	var f Flags
	f.Bind(l)
	if err := l.Parse(nil); err != nil {
		t.Fatal(err)
	}
	o, err := f.Options("http://127.0.0.1:1", testToken, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !filepath.IsAbs(o.WorkDir) || !strings.HasSuffix(o.WorkDir, filepath.Join("rel", "trainer")) {
		t.Errorf("work dir %q, want an absolute path ending in rel/trainer", o.WorkDir)
	}
}
