package finetune

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/maas-platform/maas/pkg/apierr"
	"github.com/maas-platform/maas/pkg/training"
)

func TestResolveRequest(t *testing.T) {
	defaults := training.Hyperparameters{NEpochs: DefaultNEpochs, BatchSize: DefaultBatchSize,
		LearningRateMultiplier: DefaultLRMultiplier, LoRARank: DefaultLoRARank, LoRAAlpha: DefaultLoRAAlpha}
	for _, c := range []struct {
		name  string
		body  string
		want  training.Hyperparameters
		param string // when an error is expected
	}{
		{"no method: every value auto", `{"model":"m","training_file":"file-a"}`, defaults, ""},
		{"auto strings", `{"model":"m","training_file":"file-a","method":{"type":"supervised","supervised":{"hyperparameters":{"n_epochs":"auto","batch_size":"auto","learning_rate_multiplier":"auto"}}}}`, defaults, ""},
		{"explicit values", `{"model":"m","training_file":"file-a","method":{"type":"supervised","supervised":{"hyperparameters":{"n_epochs":5,"batch_size":16,"learning_rate_multiplier":0.1,"lora_rank":64,"lora_alpha":128}}}}`,
			training.Hyperparameters{NEpochs: 5, BatchSize: 16, LearningRateMultiplier: 0.1, LoRARank: 64, LoRAAlpha: 128}, ""},
		{"legacy top-level", `{"model":"m","training_file":"file-a","hyperparameters":{"n_epochs":7}}`,
			training.Hyperparameters{NEpochs: 7, BatchSize: DefaultBatchSize, LearningRateMultiplier: DefaultLRMultiplier, LoRARank: DefaultLoRARank, LoRAAlpha: DefaultLoRAAlpha}, ""},
		{"both forms", `{"model":"m","training_file":"file-a","hyperparameters":{},"method":{"type":"supervised"}}`, defaults, "hyperparameters"},
		{"epochs above bound", `{"model":"m","training_file":"file-a","hyperparameters":{"n_epochs":51}}`, defaults, "hyperparameters.n_epochs"},
		{"rank zero", `{"model":"m","training_file":"file-a","method":{"type":"supervised","supervised":{"hyperparameters":{"lora_rank":0}}}}`, defaults, "method.supervised.hyperparameters.lora_rank"},
		{"lr not a number", `{"model":"m","training_file":"file-a","hyperparameters":{"learning_rate_multiplier":"fast"}}`, defaults, "hyperparameters.learning_rate_multiplier"},
		{"lr zero", `{"model":"m","training_file":"file-a","hyperparameters":{"learning_rate_multiplier":0}}`, defaults, "hyperparameters.learning_rate_multiplier"},
		{"bad file id", `{"model":"m","training_file":"train.jsonl"}`, defaults, "training_file"},
		{"seed negative", `{"model":"m","training_file":"file-a","seed":-1}`, defaults, "seed"},
		{"integrations", `{"model":"m","training_file":"file-a","integrations":[{"type":"wandb"}]}`, defaults, "integrations"},
		{"name too long", `{"model":"` + strings.Repeat("b", 80) + `","training_file":"file-a","suffix":"` + strings.Repeat("s", 40) + `"}`, defaults, "suffix"},
	} {
		t.Run(c.name, func(t *testing.T) {
			var r createRequest
			if err := json.Unmarshal([]byte(c.body), &r); err != nil {
				t.Fatal(err)
			}
			m, err := r.resolve()
			if c.param != "" {
				var ae *apierr.Error
				if !errors.As(err, &ae) || ae.Param != c.param || ae.Kind != apierr.InvalidRequest {
					t.Fatalf("error %v, want a 400 with param %s", err, c.param)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if m.Type != "supervised" || m.Supervised.Hyperparameters != c.want {
				t.Fatalf("method %+v, want %+v", m, c.want)
			}
		})
	}
}

func TestFineTunedModelName(t *testing.T) {
	if got := FineTunedModelName("llama-3-8b", "support", "ftjob-abc"); got != "ft:llama-3-8b:support:ftjob-abc" {
		t.Errorf("name %q", got)
	}
	if got := FineTunedModelName("m", "", "ftjob-abc"); got != "ft:m::ftjob-abc" {
		t.Errorf("name without suffix %q", got)
	}
	if id := newID("ftjob-"); len(id) != 30 || !strings.HasPrefix(id, "ftjob-") {
		t.Errorf("id %q", id)
	}
}
