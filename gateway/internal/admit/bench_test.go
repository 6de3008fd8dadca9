package admit

import (
	"context"
	"sync/atomic"
	"testing"
)

// benchRequest is a typical request: an API key and its user, every limit set high enough
// that nothing is refused.
func benchRequest(id int64) Request {
	lim := Limits{RequestsPerMinute: 1 << 40, TokensPerMinute: 1 << 50, MaxConcurrent: 1 << 20, MonthlyTokenBudget: 1 << 60}
	return reqOf(600, keySubject(id, lim), userSubject(id, lim))
}

func BenchmarkAdmitLocal(b *testing.B) {
	ctx := context.Background()
	b.Run("serial", func(b *testing.B) {
		f := newLimiter(b, nil, nil)
		r := benchRequest(1)
		b.ReportAllocs()
		for b.Loop() {
			tk, err := f.l.Admit(ctx, r)
			if err != nil {
				b.Fatal(err)
			}
			tk.Settle(300)
		}
	})
	b.Run("parallel", func(b *testing.B) {
		f := newLimiter(b, nil, nil)
		var ids atomic.Int64
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			r := benchRequest(ids.Add(1)) // one tenant per goroutine
			for pb.Next() {
				tk, err := f.l.Admit(ctx, r)
				if err != nil {
					b.Error(err)
					return
				}
				tk.Settle(300)
			}
		})
	})
}

func BenchmarkAdmitRedis(b *testing.B) {
	ctx := context.Background()
	run := func(b *testing.B, parallel bool) {
		env := newRedisEnv(b)
		f := env.limiter(b, nil, nil)
		var ids atomic.Int64
		b.ReportAllocs()
		// Timeouts under load send requests to the local tier: report how many.
		defer func() { b.ReportMetric(float64(f.fallbacks())/float64(b.N), "fallbacks/op") }()
		if !parallel {
			r := benchRequest(1)
			for b.Loop() {
				tk, err := f.l.Admit(ctx, r)
				if err != nil {
					b.Fatal(err)
				}
				tk.Settle(300)
			}
			return
		}
		b.RunParallel(func(pb *testing.PB) {
			r := benchRequest(ids.Add(1))
			for pb.Next() {
				tk, err := f.l.Admit(ctx, r)
				if err != nil {
					b.Error(err)
					return
				}
				tk.Settle(300)
			}
		})
		b.StopTimer()
		f.l.Close() // flush settlements inside the measurement's cleanup, not the loop
	}
	b.Run("ping", func(b *testing.B) { // reference: one bare round trip on the same client
		env := newRedisEnv(b)
		f := env.limiter(b, nil, nil)
		b.ReportAllocs()
		for b.Loop() {
			if err := f.l.redis.client.Ping(ctx).Err(); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("serial", func(b *testing.B) { run(b, false) })
	b.Run("parallel", func(b *testing.B) { run(b, true) })
}
