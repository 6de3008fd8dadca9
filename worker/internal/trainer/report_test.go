package trainer

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/maas-platform/maas/pkg/training"
)

func ptr(v float64) *float64 { return &v }

func TestReporterBatchesAndMerges(t *testing.T) {
	f := newFakeControl(t, dataset, "")
	task := &training.Task{JobID: "ftjob-1", LeaseToken: "lease-1"}
	r := newReporter(newClient(f.srv.URL, testToken), task, slog.New(slog.DiscardHandler), time.Hour, nil)
	go r.run(context.Background())
	for i := 1; i <= 2500; i++ {
		r.add(Progress{Metric: &training.Metric{Step: i, TotalSteps: 2500, TrainLoss: ptr(1)}})
	}
	// A validation line for the last step keeps the step's training loss, and the total
	// stated before.
	r.add(Progress{Metric: &training.Metric{Step: 2500, ValidLoss: ptr(2)}, Checkpoint: true})
	for i := 0; i < maxEvents+5; i++ {
		r.event("info", "line")
	}
	if err := r.close(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer f.lock()()
	if len(f.metrics) != 2501 {
		t.Fatalf("%d metrics sent, want 2501", len(f.metrics))
	}
	last := f.metrics[2500]
	if last.TrainLoss == nil || *last.TrainLoss != 1 || last.ValidLoss == nil || *last.ValidLoss != 2 || last.TotalSteps != 2500 {
		t.Errorf("last metric %+v: the validation line lost the training loss", last)
	}
	if len(f.checkpoints) != 1 || f.checkpoints[0].Step != 2500 || f.checkpoints[0].Metrics.TrainLoss == nil {
		t.Errorf("checkpoints %+v", f.checkpoints)
	}
	if n := len(f.events); n != maxEvents+1 || !strings.Contains(f.events[n-1].Message, "5 more trainer messages not shown") {
		t.Errorf("%d events, last %+v", n, f.events[n-1])
	}
	if len(f.badCalls) > 0 {
		t.Errorf("bad calls %q", f.badCalls)
	}
}
