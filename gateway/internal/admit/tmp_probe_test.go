package admit

import (
	"context"
	"testing"
)

func BenchmarkTmpPing(b *testing.B) {
	env := newRedisEnv(b)
	f := env.limiter(b, nil, nil)
	ctx := context.Background()
	for b.Loop() {
		f.l.redis.client.Ping(ctx)
	}
}

func BenchmarkTmpAdmitOnly(b *testing.B) {
	env := newRedisEnv(b)
	f := env.limiter(b, nil, nil)
	ctx := context.Background()
	r := benchRequest(1)
	r.Subjects[0].Limits.MaxConcurrent = 0
	r.Subjects[1].Limits.MaxConcurrent = 0
	for b.Loop() {
		f.l.Admit(ctx, r)
	}
}
