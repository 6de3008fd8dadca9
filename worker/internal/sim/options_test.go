package sim

import (
	"errors"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/maas-platform/maas/pkg/config"
)

// The settings of this round, from the environment and from flags.
func TestSettings(t *testing.T) {
	type got struct {
		Flush       bool
		Idle        time.Duration
		Fingerprint string
	}
	for _, tt := range []struct {
		name string
		env  map[string]string
		args []string
		want got
		err  string
	}{
		{"defaults", nil, nil, got{false, 5 * time.Second, ""}, ""},
		{"environment", map[string]string{"MAAS_SIM_FLUSH_EVERY_TOKEN": "true", "MAAS_SIM_IDLE_TIMEOUT": "2s", "MAAS_SIM_SYSTEM_FINGERPRINT": "fp-1"}, nil,
			got{true, 2 * time.Second, "fp-1"}, ""},
		{"flags", nil, []string{"-sim-flush-every-token", "-sim-idle-timeout=750ms", "-sim-system-fingerprint=fp-2"},
			got{true, 750 * time.Millisecond, "fp-2"}, ""},
		{"idle timeout must be positive", map[string]string{"MAAS_SIM_IDLE_TIMEOUT": "0s"}, nil, got{}, "MAAS_SIM_IDLE_TIMEOUT"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			l, err := config.NewLoader("sim", t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			var f Flags
			f.Bind(l)
			if err := l.Parse(tt.args); err != nil {
				t.Fatal(err)
			}
			o, err := f.Options()
			if tt.err != "" {
				var ce *config.Error
				if !errors.As(err, &ce) || ce.Name != tt.err {
					t.Errorf("error %v, want one naming %s", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got{o.FlushEveryToken, o.IdleTimeout, o.SystemFingerprint}); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestLoRASettings(t *testing.T) {
	for _, tt := range []struct {
		name    string
		env     map[string]string
		slots   int
		runtime bool
		err     string
	}{
		{"defaults", nil, 8, true, ""},
		{"environment", map[string]string{"MAAS_SIM_MAX_LORAS": "3", "MAAS_SIM_RUNTIME_LORA_UPDATING": "false"}, 3, false, ""},
		{"negative", map[string]string{"MAAS_SIM_MAX_LORAS": "-1"}, 0, false, "MAAS_SIM_MAX_LORAS"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			l, err := config.NewLoader("sim", t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			var f Flags
			f.Bind(l)
			if err := l.Parse(nil); err != nil {
				t.Fatal(err)
			}
			o, err := f.Options()
			if tt.err != "" {
				var ce *config.Error
				if !errors.As(err, &ce) || ce.Name != tt.err {
					t.Errorf("error %v, want one naming %s", err, tt.err)
				}
				return
			}
			if err != nil || o.MaxLoRAs != tt.slots || o.RuntimeLoRAUpdating != tt.runtime {
				t.Errorf("MaxLoRAs %d, RuntimeLoRAUpdating %v, err %v", o.MaxLoRAs, o.RuntimeLoRAUpdating, err)
			}
		})
	}
}
