//go:build !race

package admit

import (
	"context"
	"testing"
)

// TestAdmitLocalAllocations: the local tier allocates the Ticket and nothing else.
func TestAdmitLocalAllocations(t *testing.T) {
	f := newLimiter(t, nil, nil)
	ctx := context.Background()
	r := benchRequest(1)
	allocs := testing.AllocsPerRun(1000, func() {
		tk, err := f.l.Admit(ctx, r)
		if err != nil {
			t.Fatal(err)
		}
		tk.Settle(300)
	})
	if allocs > 1 {
		t.Errorf("Admit+Settle allocates %v times, want at most 1 (the Ticket)", allocs)
	}
	// The gateway builds the subjects in an array on its stack: that array must not escape.
	lim := Limits{RequestsPerMinute: 1 << 40, TokensPerMinute: 1 << 50, MaxConcurrent: 1 << 20}
	allocs = testing.AllocsPerRun(1000, func() {
		subjects := [2]Subject{{Scope: ScopeKey, ID: 7, Limits: lim}, {Scope: ScopeUser, ID: 7, Limits: lim}}
		tk, err := f.l.Admit(ctx, Request{Subjects: subjects[:], Tokens: 600})
		if err != nil {
			t.Fatal(err)
		}
		tk.Settle(300)
	})
	if allocs > 1 {
		t.Errorf("Admit with a stack array of subjects allocates %v times, want at most 1", allocs)
	}
	unlimited := reqOf(10, keySubject(2, Limits{}))
	if allocs := testing.AllocsPerRun(1000, func() {
		tk, _ := f.l.Admit(ctx, unlimited)
		tk.Settle(1)
	}); allocs != 0 {
		t.Errorf("unlimited Admit allocates %v times, want 0", allocs)
	}
}
