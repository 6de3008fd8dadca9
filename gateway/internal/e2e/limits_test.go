package e2e

import (
	"encoding/json"
	"fmt"
	"math"
	"sync"
	"testing"
	"time"
)

// TestRateLimits checks requests/minute and tokens/minute on one gateway (local tier) and
// on two gateways sharing Redis: what is admitted stays within 5% of what the limit
// allows over the run (the burst plus the refill during the run).
func TestRateLimits(t *testing.T) {
	for _, tc := range []struct {
		name     string
		gateways int
	}{{"one gateway", 1}, {"two gateways sharing redis", 2}} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, tc.gateways > 1)
			e.sim("sim-a", "MAAS_SIM_OUTPUT_TOKENS=40")
			var urls []string
			// Subject ids repeat across fresh databases: keep this run's Redis keys apart.
			prefix := fmt.Sprintf("MAAS_QUOTA_KEY_PREFIX=e2e:%d:", time.Now().UnixNano())
			for range tc.gateways {
				_, u := e.gateway(prefix)
				urls = append(urls, u)
			}

			t.Run("rpm", func(t *testing.T) {
				const limit = 40
				key := e.key(urls[0], map[string]any{"name": "rpm", "rpm": limit})
				for _, u := range urls[1:] {
					waitStatus(t, u, key, 200, time.Second)
				}
				// waitStatus used GET /v1/models, which is not rate limited.
				start := time.Now()
				okN, _ := fire(t, urls, key, 2*limit, 8, `{"model":"sim-chat","messages":[{"role":"user","content":"hi"}],"max_tokens":1}`)
				allowed := limit + limit*time.Since(start).Minutes()
				t.Logf("admitted %d of %d, allowed %.1f", okN, 2*limit, allowed)
				if math.Abs(float64(okN)-allowed) > 0.05*allowed {
					t.Errorf("admitted %d requests, want %.1f ± 5%%", okN, allowed)
				}
			})

			t.Run("tpm", func(t *testing.T) {
				const limit = 1500
				key := e.key(urls[0], map[string]any{"name": "tpm", "tpm": limit})
				for _, u := range urls[1:] {
					waitStatus(t, u, key, 200, time.Second)
				}
				start := time.Now()
				okN, tokens := fire(t, urls, key, 60, 4, `{"model":"sim-chat","messages":[{"role":"user","content":"count to forty"}],"max_tokens":40}`)
				allowed := limit + limit*time.Since(start).Minutes()
				per := float64(tokens) / float64(max(okN, 1))
				t.Logf("admitted %d requests, %d tokens (%.1f each), allowed %.1f", okN, tokens, per, allowed)
				// A request is admitted only when its whole reservation fits, so up to one
				// request's worth of the allowance may stay unused.
				if float64(tokens) > 1.05*allowed || float64(tokens) < 0.95*allowed-per {
					t.Errorf("used %d tokens, want %.1f ± 5%%", tokens, allowed)
				}
			})
		})
	}
}

// fire sends n requests from workers goroutines, spread over urls, and returns how many
// succeeded and the tokens they used. Anything but 200 and 429 fails the test.
func fire(t *testing.T, urls []string, key string, n, workers int, body string) (int, int64) {
	t.Helper()
	var mu sync.Mutex
	var okN int
	var tokens int64
	jobs := make(chan int)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				st, hdr, b := post(t, urls[i%len(urls)]+"/v1/chat/completions", key, body)
				switch st {
				case 200:
					var out struct {
						Usage usageJSON `json:"usage"`
					}
					_ = json.Unmarshal(b, &out)
					mu.Lock()
					okN++
					tokens += out.Usage.PromptTokens + out.Usage.CompletionTokens
					mu.Unlock()
				case 429:
					if hdr.Get("Retry-After") == "" {
						t.Errorf("429 without Retry-After: %s", b)
					}
				default:
					t.Errorf("status %d: %s", st, b)
				}
			}
		}()
	}
	for i := range n {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	return okN, tokens
}
