package deploytest

import (
	"context"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/maas-platform/maas/pkg/testenv"
)

// rateLimitedRPM is the requests-per-minute limit of the key the SDK suites use to provoke
// a 429: small enough to hit quickly, large enough that Retry-After stays a few seconds.
const rateLimitedRPM = 30

// testNodeSDK runs the official OpenAI Node client's suite (deploy/sdktest/node) against the
// running gateway: `npm ci`, then `node --test`.
func (pl *platform) testNodeSDK(t *testing.T) {
	node := requireTool(t, "node", "apt-get install -y nodejs npm")
	npm := requireTool(t, "npm", "apt-get install -y npm")
	dir := deployPath(t, "sdktest", "node")
	limited := pl.p.CreateKey(pl.admin, map[string]any{"name": "node-limited", "rpm": rateLimitedRPM})
	pl.waitKey(limited)
	fineTuning := pl.fineTuningEnv(t)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	ci := exec.CommandContext(ctx, npm, "ci", "--no-audit", "--no-fund", "--loglevel=error")
	ci.Dir = dir
	if out, err := ci.CombinedOutput(); err != nil {
		t.Fatalf("npm ci: %v\n%s", err, out)
	}
	run := exec.CommandContext(ctx, node, "--test", "--test-reporter=spec")
	run.Dir = dir
	run.Env = append(os.Environ(),
		"SDKTEST_BASE_URL="+pl.gateway+"/v1",
		"SDKTEST_API_KEY="+pl.key,
		"SDKTEST_LIMITED_KEY="+limited,
		"SDKTEST_CHAT_MODEL="+chatModel,
		"SDKTEST_EMBEDDING_MODEL="+embeddingModel,
		"SDKTEST_VECTOR_STORES=1", // control embeds through this gateway (startPlatform)
	)
	run.Env = append(run.Env, fineTuning...)
	out, err := run.CombinedOutput()
	if err != nil {
		t.Fatalf("node --test: %v\n%s", err, out)
	}
	pass, fail, skipped := nodeCount(out, "pass"), nodeCount(out, "fail"), nodeCount(out, "skipped")
	if pass < 21 || fail != 0 || skipped != 0 {
		t.Fatalf("node --test ran too few tests, skipped one or hid a failure:\n%s", out)
	}
	t.Logf("node --test:\n%s", out)
}

// fineTuningEnv starts what finetune.test.mjs needs — a base model served by a simulator
// with LoRA slots, `worker train` with the SIMULATED trainer at a fast pace, two developers
// with a key each — and returns its SDKTEST_FT_* environment.
func (pl *platform) fineTuningEnv(t *testing.T) []string {
	t.Helper()
	const base = "node-ft-base"
	pl.p.Do("POST", pl.p.ControlURL+"/api/v1/models", pl.admin, map[string]any{"name": base, "type": "chat"}, 201, nil)
	pl.engine("sim-ft", "MAAS_SIM_MODELS="+base, "MAAS_SIM_EMBEDDING_MODELS=sim-ft-embedding", "MAAS_HEARTBEAT_INTERVAL=200ms",
		"MAAS_SIM_MAX_LORAS=2", "MAAS_ADAPTER_CACHE_DIR="+t.TempDir())
	testenv.Start(t, "worker-train", pl.p.Bin.Worker, []string{"train"}, pl.p.Env("MAAS_TRAINER_COMMAND=sim",
		"MAAS_TRAIN_SIM_STEP_INTERVAL=10ms", "MAAS_TRAINER_POLL_INTERVAL=100ms", "MAAS_TRAINER_ID=node-trainer",
		"MAAS_WORKER_ADDR="+testenv.FreeAddr(t))...)
	keys := map[string]string{}
	for _, who := range []string{"owner", "other"} {
		pl.p.Do("POST", pl.p.ControlURL+"/api/v1/users", pl.admin, map[string]any{"username": "node_ft_" + who,
			"password": "Password-123", "roles": []string{"developer"}}, 201, nil)
		keys[who] = pl.p.CreateKey(pl.p.Login("node_ft_"+who, "Password-123"), map[string]any{"name": "node-ft-" + who})
		pl.waitKey(keys[who])
	}
	pl.waitModels(base)
	return []string{"SDKTEST_FT_BASE_MODEL=" + base, "SDKTEST_FT_KEY=" + keys["owner"], "SDKTEST_FT_OTHER_KEY=" + keys["other"]}
}

// nodeCount reads a count ("pass", "fail") from node --test's summary; -1 when absent.
func nodeCount(out []byte, what string) int {
	m := regexp.MustCompile(`(?m)^\S*\s*` + what + ` (\d+)$`).FindSubmatch(out)
	if m == nil {
		return -1
	}
	n, _ := strconv.Atoi(string(m[1]))
	return n
}

// waitKey waits until the gateway knows a new key (it learns keys through NOTIFY).
func (pl *platform) waitKey(key string) {
	pl.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		status, body := pl.do("GET", "/v1/models", key, "")
		if status == 200 {
			return
		}
		if time.Now().After(deadline) {
			pl.t.Fatalf("gateway does not accept the new key: %d %s", status, body)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
