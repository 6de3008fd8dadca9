package admit

import (
	"context"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
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
	run := func(b *testing.B, parallel bool, perCPU int) {
		env := newRedisEnv(b)
		f := env.limiter(b, nil, func(o *Options) {
			if n, _ := strconv.Atoi(os.Getenv("ADMIT_PIPELINES")); n > 0 {
				o.AdmitPipelines = n
			}
		})
		var ids atomic.Int64
		b.ReportAllocs()
		// Timeouts under load send requests to the local tier: report how many. CPU time (this
		// process's and redis-server's, settlements flushed) is the figure that machine noise
		// barely moves.
		cpu0, rcpu0 := selfCPU(), redisCPU(b, env)
		defer func() {
			b.ReportMetric(float64(f.fallbacks())/float64(b.N), "fallbacks/op")
			f.l.Close()
			b.ReportMetric(float64((selfCPU()-cpu0).Microseconds())/float64(b.N), "cpu-µs/op")
			b.ReportMetric(float64((redisCPU(b, env)-rcpu0).Microseconds())/float64(b.N), "redis-cpu-µs/op")
		}()
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
		b.SetParallelism(perCPU)
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
	b.Run("serial", func(b *testing.B) { run(b, false, 1) })
	b.Run("parallel", func(b *testing.B) { run(b, true, 1) })
	// Many requests at once, as a gateway under load has: their admissions share round trips.
	b.Run("parallel32", func(b *testing.B) { run(b, true, 32) })
}

// selfCPU is this process's user+system CPU time so far.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// redisCPU is redis-server's user+system CPU time so far (INFO cpu).
func redisCPU(b testing.TB, env redisEnv) time.Duration {
	info, err := env.c.Info(context.Background(), "cpu").Result()
	if err != nil {
		b.Fatal(err)
	}
	var total float64
	for _, line := range strings.Split(info, "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if ok && (k == "used_cpu_sys" || k == "used_cpu_user") {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				b.Fatal(err)
			}
			total += f
		}
	}
	return time.Duration(total * float64(time.Second))
}
