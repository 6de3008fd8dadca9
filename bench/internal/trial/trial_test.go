package trial

import (
	"context"
	"errors"
	"slices"
	"sync/atomic"
	"testing"
	"time"
)

func TestOrderRotates(t *testing.T) {
	modes := []string{"direct", "passthrough", "gateway"}
	want := [][]string{
		{"direct", "passthrough", "gateway"},
		{"passthrough", "gateway", "direct"},
		{"gateway", "direct", "passthrough"},
		{"direct", "passthrough", "gateway"},
		{"passthrough", "gateway", "direct"},
	}
	for i, w := range want {
		if got := Order(modes, i); !slices.Equal(got, w) {
			t.Errorf("trial %d: %v, want %v", i, got, w)
		}
	}
	if !slices.Equal(modes, []string{"direct", "passthrough", "gateway"}) {
		t.Errorf("Order modified its argument: %v", modes)
	}
	// Over len(modes) trials every mode takes every position once.
	for pos := range modes {
		seen := map[string]bool{}
		for i := range modes {
			seen[Order(modes, i)[pos]] = true
		}
		if len(seen) != len(modes) {
			t.Errorf("position %d holds only %v", pos, seen)
		}
	}
	if Order([]int(nil), 2) != nil {
		t.Error("no modes: want nil")
	}
}

// counter is a CPU source whose readings are given in advance; an error ends them.
func counter(readings ...any) func() (time.Duration, error) {
	var i int
	return func() (time.Duration, error) {
		r := readings[i]
		i++
		if err, ok := r.(error); ok {
			return 0, err
		}
		return r.(time.Duration), nil
	}
}

func TestMeter(t *testing.T) {
	errRead := errors.New("no such process")
	for _, tc := range []struct {
		name     string
		src      []Source
		requests int64
		want     []time.Duration
		startErr bool
		stopErr  error // nil: success; errRead or ErrNoCPU: wrapped
		anyErr   bool
	}{
		{name: "deltas", requests: 10, src: []Source{
			{Name: "gateway", Busy: true, Read: counter(time.Second, 3*time.Second)},
			{Name: "postgres", Read: counter(5*time.Second, 5*time.Second)}, // idle: fine
		}, want: []time.Duration{2 * time.Second, 0}},
		{name: "failed start read", startErr: true, src: []Source{
			{Name: "gateway", Busy: true, Read: counter(errRead)},
		}},
		{name: "failed stop read is an error, not a zero", requests: 10, stopErr: errRead, src: []Source{
			{Name: "gateway", Busy: true, Read: counter(time.Second, time.Second*2)},
			{Name: "redis", Read: counter(time.Second, errRead)},
		}},
		{name: "busy proxy without CPU", requests: 10, stopErr: ErrNoCPU, src: []Source{
			{Name: "gateway", Busy: true, Read: counter(time.Second, time.Second)},
		}},
		{name: "no requests, no CPU: fine", requests: 0, src: []Source{
			{Name: "gateway", Busy: true, Read: counter(time.Second, time.Second)},
		}, want: []time.Duration{0}},
		{name: "backwards (another process)", requests: 10, anyErr: true, src: []Source{
			{Name: "gateway", Busy: true, Read: counter(2*time.Second, time.Second)},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := Start(tc.src...)
			if tc.startErr {
				if err == nil {
					t.Fatal("Start: want an error")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got, err := m.Stop(tc.requests)
			switch {
			case tc.stopErr != nil:
				if !errors.Is(err, tc.stopErr) {
					t.Fatalf("Stop: %v, want %v", err, tc.stopErr)
				}
			case tc.anyErr:
				if err == nil {
					t.Fatalf("Stop: %v, want an error", got)
				}
			case err != nil:
				t.Fatal(err)
			case !slices.Equal(got, tc.want):
				t.Fatalf("Stop: %v, want %v", got, tc.want)
			}
		})
	}
}

func TestLedgerWait(t *testing.T) {
	seq := func(counts ...int64) func(context.Context) (int64, error) {
		var i atomic.Int64
		return func(context.Context) (int64, error) {
			n := i.Add(1) - 1
			if int(n) >= len(counts) {
				return counts[len(counts)-1], nil
			}
			return counts[n], nil
		}
	}
	ctx := context.Background()
	t.Run("settles", func(t *testing.T) {
		c := LedgerCheck{Count: seq(0, 400, 1000), Poll: time.Millisecond, Timeout: time.Minute}
		if got, err := c.Wait(ctx, 1000); err != nil || got != 1000 {
			t.Fatalf("%d, %v", got, err)
		}
	})
	t.Run("too many rows fail at once", func(t *testing.T) {
		c := LedgerCheck{Count: seq(1001), Poll: time.Millisecond, Timeout: time.Minute}
		if got, err := c.Wait(ctx, 1000); !errors.Is(err, ErrLedgerMismatch) || got != 1001 {
			t.Fatalf("%d, %v", got, err)
		}
	})
	t.Run("missing rows fail at the deadline", func(t *testing.T) {
		c := LedgerCheck{Count: seq(999), Poll: time.Millisecond, Timeout: 50 * time.Millisecond}
		if got, err := c.Wait(ctx, 1000); !errors.Is(err, ErrLedgerMismatch) || got != 999 {
			t.Fatalf("%d, %v", got, err)
		}
	})
	t.Run("count error", func(t *testing.T) {
		boom := errors.New("connection refused")
		c := LedgerCheck{Count: func(context.Context) (int64, error) { return 0, boom }, Poll: time.Millisecond}
		if _, err := c.Wait(ctx, 1); !errors.Is(err, boom) || errors.Is(err, ErrLedgerMismatch) {
			t.Fatalf("%v", err)
		}
	})
	t.Run("cancelled", func(t *testing.T) {
		ctx, cancel := context.WithCancel(ctx)
		cancel()
		c := LedgerCheck{Count: seq(0), Poll: time.Millisecond}
		if _, err := c.Wait(ctx, 1); !errors.Is(err, context.Canceled) {
			t.Fatalf("%v", err)
		}
	})
}
