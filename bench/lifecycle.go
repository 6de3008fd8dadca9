package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"mime/multipart"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/maas-platform/maas/bench/internal/procstat"
	"github.com/maas-platform/maas/bench/internal/report"
	"github.com/maas-platform/maas/bench/internal/stack"
)

// The fine-tuning and file scenarios: a 500 MiB file through the gateway, the time from a
// fine-tuning job's success to the first token of the new model on every backend of its
// base, and the cold on-demand load of an adapter loaded nowhere. Each is one timed run
// (not trials of three modes); its figures are in the scenario's targets and notes.

const (
	fileSize    = 500 << 20
	tuneBase    = "bench-tune"       // two serving workers, the make run heartbeat (2 s)
	tuneBaseHB5 = "bench-tune-hb500" // one serving worker, a 500 ms heartbeat
)

func lifecycleScenarios() []scenario {
	return []scenario{
		{
			name:     "file 500 MiB",
			settings: "a 500 MiB file uploaded to /v1/files through a fresh gateway and downloaded back, streamed both ways; gateway RSS sampled every 20 ms",
			run:      func(ctx context.Context, e *env, sc *report.Scenario, _ int) error { return e.fileThrough(ctx, sc) },
		},
		{
			name: "fine-tune to first token",
			settings: "two fine-tuning jobs (simulated trainer) on a base served by two simulator workers with one LoRA slot each and the make run " +
				"heartbeat (2 s): time from the job's succeeded (its finished_at) to the first streamed token of the new model from each backend, " +
				"asked directly, and through the gateway",
			run: func(ctx context.Context, e *env, sc *report.Scenario, _ int) error {
				return e.tuneToFirstToken(ctx, sc)
			},
		},
		{
			name: "cold adapter load",
			settings: "an adapter evicted from both backends of the fine-tune scenario (one slot each, a second adapter trained) asked for " +
				"through the gateway: request to answer, heartbeat 2 s",
			run: func(ctx context.Context, e *env, sc *report.Scenario, _ int) error {
				t, err := e.tuneStackFor(ctx, tuneBase)
				if err != nil {
					return err
				}
				return e.coldLoad(ctx, sc, t)
			},
		},
		{
			name:     "cold adapter load hb 500ms",
			settings: "as above, one simulator worker with a 500 ms heartbeat",
			run: func(ctx context.Context, e *env, sc *report.Scenario, _ int) error {
				t, err := e.tuneStackFor(ctx, tuneBaseHB5)
				if err != nil {
					return err
				}
				return e.coldLoad(ctx, sc, t)
			},
		},
	}
}

// --- 500 MiB file -------------------------------------------------------------------

// patternReader yields n deterministic bytes (a 1 MiB block, each copy stamped with its
// index so that no two MiB are alike), hashing them as they are read.
type patternReader struct {
	left, off int64
	block     []byte
	sum       hash.Hash
}

func newPatternReader(n int64, sum hash.Hash) *patternReader {
	b := make([]byte, 1<<20)
	for i := range b {
		b[i] = 'a' + byte(i*7+i/26)%26
	}
	return &patternReader{left: n, block: b, sum: sum}
}

func (p *patternReader) Read(b []byte) (int, error) {
	if p.left <= 0 {
		return 0, io.EOF
	}
	n := 0
	for n < len(b) && p.left > 0 {
		at := p.off % int64(len(p.block))
		if at == 0 {
			binary.BigEndian.PutUint64(p.block, uint64(p.off>>20))
		}
		k := copy(b[n:], p.block[at:min(int64(len(p.block)), at+p.left)])
		n += k
		p.off += int64(k)
		p.left -= int64(k)
	}
	p.sum.Write(b[:n])
	return n, nil
}

// rssPeak samples a process's RSS every 20 ms until stopped and returns the largest.
func rssPeak(pid int) (stop func() int64) {
	var peak int64
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			if rss, _, err := procstat.Memory(pid); err == nil && rss > peak {
				peak = rss
			}
			select {
			case <-done:
				return
			case <-tick.C:
			}
		}
	})
	return func() int64 {
		close(done)
		wg.Wait()
		return peak
	}
}

func (e *env) fileThrough(ctx context.Context, sc *report.Scenario) error {
	gw, err := e.startGateway(ctx, "gateway-files")
	if err != nil {
		return err
	}
	defer gw.Stop(10 * time.Second)
	if err := waitServes(ctx, gw.Addr, e.key, modelFast); err != nil { // its configuration is loaded
		return err
	}
	base := "http://" + gw.Addr
	// Warm both paths with a small file, then read the idle figure.
	id, _, err := e.uploadFile(ctx, base, 64<<10)
	if err != nil {
		return fmt.Errorf("warm-up upload: %w", err)
	}
	if _, _, err := e.downloadFile(ctx, base, id); err != nil {
		return fmt.Errorf("warm-up download: %w", err)
	}
	e.deleteFile(ctx, base, id)
	idle, _, err := procstat.Memory(gw.PID())
	if err != nil {
		return err
	}

	stop := rssPeak(gw.PID())
	start := time.Now()
	id, want, err := e.uploadFile(ctx, base, fileSize)
	upTime := time.Since(start)
	peakUp := stop()
	if err != nil {
		return fmt.Errorf("upload: %w", err)
	}
	defer e.deleteFile(ctx, base, id)

	stop = rssPeak(gw.PID())
	start = time.Now()
	got, n, err := e.downloadFile(ctx, base, id)
	downTime := time.Since(start)
	peakDown := stop()
	if err != nil {
		return fmt.Errorf("download: %w", err)
	}
	if n != fileSize || got != want {
		sc.Fail(fmt.Errorf("the download differs from the upload: %d bytes of %d, same SHA-256 %v", n, fileSize, got == want))
	}
	mib := func(b int64) float64 { return float64(b) / (1 << 20) }
	sc.Notes = append(sc.Notes,
		fmt.Sprintf("upload: %.1f s, %.0f MiB/s; gateway RSS idle %.1f MiB, peak %.1f MiB (+%.1f)",
			upTime.Seconds(), mib(fileSize)/upTime.Seconds(), mib(idle), mib(peakUp), mib(peakUp-idle)),
		fmt.Sprintf("download: %.1f s, %.0f MiB/s; gateway RSS peak %.1f MiB (+%.1f); SHA-256 of the content the same both ways",
			downTime.Seconds(), mib(fileSize)/downTime.Seconds(), mib(peakDown), mib(peakDown-idle)))
	for _, t := range []report.Target{
		{Name: "gateway RSS above idle during the 500 MiB upload", Value: mib(peakUp - idle), Limit: 64, Unit: "MiB", Max: true},
		{Name: "gateway RSS above idle during the 500 MiB download", Value: mib(peakDown - idle), Limit: 64, Unit: "MiB", Max: true},
	} {
		if t.Check(); !t.Met {
			sc.Fail(fmt.Errorf("%s: %.1f MiB, over %.0f MiB: the body is not streamed", t.Name, t.Value, t.Limit))
		}
		sc.Targets = append(sc.Targets, t)
	}
	return nil
}

// uploadFile streams n pattern bytes to base/v1/files and returns the file's id and the
// content's SHA-256.
func (e *env) uploadFile(ctx context.Context, base string, n int64) (string, [32]byte, error) {
	var sum [32]byte
	var head, tail bytes.Buffer
	mw := multipart.NewWriter(&head)
	_ = mw.WriteField("purpose", "user_data")
	if _, err := mw.CreateFormFile("file", "bench.bin"); err != nil {
		return "", sum, err
	}
	fmt.Fprintf(&tail, "\r\n--%s--\r\n", mw.Boundary())
	h := sha256.New()
	body := io.MultiReader(&head, newPatternReader(n, h), &tail)
	req, _ := http.NewRequestWithContext(ctx, "POST", base+"/v1/files", body)
	req.ContentLength = int64(head.Len()) + n + int64(tail.Len())
	req.Header.Set("Authorization", "Bearer "+e.key)
	req.Header.Set("Content-Type", mw.FormDataContentType())
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", sum, err
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return "", sum, fmt.Errorf("%s: %s", resp.Status, raw)
	}
	var f struct {
		ID    string `json:"id"`
		Bytes int64  `json:"bytes"`
	}
	if err := json.Unmarshal(raw, &f); err != nil || f.Bytes != n {
		return "", sum, fmt.Errorf("upload answer %s (%v), want %d bytes", raw, err, n)
	}
	copy(sum[:], h.Sum(nil))
	return f.ID, sum, nil
}

func (e *env) downloadFile(ctx context.Context, base, id string) ([32]byte, int64, error) {
	var sum [32]byte
	req, _ := http.NewRequestWithContext(ctx, "GET", base+"/v1/files/"+id+"/content", nil)
	req.Header.Set("Authorization", "Bearer "+e.key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return sum, 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		raw, _ := io.ReadAll(resp.Body)
		return sum, 0, fmt.Errorf("%s: %s", resp.Status, raw)
	}
	h := sha256.New()
	n, err := io.Copy(h, resp.Body)
	copy(sum[:], h.Sum(nil))
	return sum, n, err
}

func (e *env) deleteFile(ctx context.Context, base, id string) {
	req, _ := http.NewRequestWithContext(ctx, "DELETE", base+"/v1/files/"+id, nil)
	req.Header.Set("Authorization", "Bearer "+e.key)
	if resp, err := http.DefaultClient.Do(req); err == nil {
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
}

// --- fine-tuning ----------------------------------------------------------------------

// tuneStack is a base model's serving workers (simulators with one LoRA slot each) and
// the adapters trained on it so far.
type tuneStack struct {
	base     string
	sims     []string // simulator addresses, one per serving worker
	adapters []string // fine-tuned models, oldest first
	workers  []*stack.Proc
}

// tuneShared is what every tune stack uses: the admin's access token and API key (the
// fine-tuned models are the admin's, served to their owner) and the training worker.
type tuneShared struct {
	token, key string
	stacks     map[string]*tuneStack
}

func (e *env) controlJSON(ctx context.Context, method, path, token string, body any, want int, out any) error {
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequestWithContext(ctx, method, e.controlURL+path, rd)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != want {
		return fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, raw)
	}
	if out != nil {
		return json.Unmarshal(raw, out)
	}
	return nil
}

// tuneShared logs in as the admin, creates the admin's key and starts the training
// worker, once.
func (e *env) tuneSetup(ctx context.Context) (*tuneShared, error) {
	if e.tune != nil {
		return e.tune, nil
	}
	t := &tuneShared{stacks: map[string]*tuneStack{}}
	var login struct {
		AccessToken string `json:"access_token"`
	}
	if err := e.controlJSON(ctx, "POST", "/api/v1/auth/login", "", map[string]string{"username": "admin", "password": e.adminPassword}, 200, &login); err != nil {
		return nil, err
	}
	t.token = login.AccessToken
	var key struct {
		Key string `json:"key"`
	}
	if err := e.controlJSON(ctx, "POST", "/api/v1/api-keys", t.token, map[string]any{"name": "bench tune"}, 201, &key); err != nil {
		return nil, err
	}
	t.key = key.Key
	work := filepath.Join(e.logDir, "trainer")
	if err := os.MkdirAll(work, 0o755); err != nil {
		return nil, err
	}
	addr, _ := stack.FreeAddr()
	_, err := e.stack.Start(ctx, "trainer", addr, filepath.Join(e.o.bin, "worker"), []string{"train"},
		[]string{"MAAS_WORKER_ADDR=" + addr, "MAAS_CONTROL_URL=" + e.controlURL, "MAAS_TRAINER_COMMAND=sim",
			"MAAS_TRAINER_ID=bench-trainer", "MAAS_TRAINER_WORK_DIR=" + work,
			"MAAS_TRAIN_SIM_STEP_INTERVAL=5ms", "MAAS_TRAINER_POLL_INTERVAL=100ms"}, "http://"+addr+"/health")
	if err != nil {
		return nil, err
	}
	e.tune = t
	return t, nil
}

// tuneStackFor returns base's stack with two adapters trained (starting it the first time).
func (e *env) tuneStackFor(ctx context.Context, base string) (*tuneStack, error) {
	t, err := e.tuneSetup(ctx)
	if err != nil {
		return nil, err
	}
	s := t.stacks[base]
	if s == nil {
		backends, heartbeat := 2, 2*time.Second
		if base == tuneBaseHB5 {
			backends, heartbeat = 1, 500*time.Millisecond
		}
		if s, err = e.startTuneStack(ctx, t, base, backends, heartbeat); err != nil {
			return nil, err
		}
		t.stacks[base] = s
	}
	for len(s.adapters) < 2 {
		model, _, err := e.fineTune(ctx, t, base, fmt.Sprintf("a%d", len(s.adapters)+1))
		if err != nil {
			return nil, err
		}
		s.adapters = append(s.adapters, model)
	}
	return s, nil
}

func (e *env) startTuneStack(ctx context.Context, t *tuneShared, base string, backends int, heartbeat time.Duration) (*tuneStack, error) {
	if err := e.controlJSON(ctx, "POST", "/api/v1/models", t.token, map[string]any{"name": base, "type": "chat"}, 201, nil); err != nil {
		return nil, err
	}
	s := &tuneStack{base: base}
	for i := range backends {
		simAddr, _ := stack.FreeAddr()
		waddr, _ := stack.FreeAddr()
		name := fmt.Sprintf("worker-%s-%d", base, i)
		cache := filepath.Join(e.logDir, "adapters-"+name)
		if err := os.MkdirAll(cache, 0o755); err != nil {
			return nil, err
		}
		w, err := e.stack.Start(ctx, name, waddr, filepath.Join(e.o.bin, "worker"), []string{"--engine", "sim"},
			[]string{"MAAS_WORKER_ADDR=" + waddr, "MAAS_CONTROL_URL=" + e.controlURL, "MAAS_BACKEND_ID=bench-" + base + fmt.Sprint("-", i),
				"MAAS_SIM_ADDR=" + simAddr, "MAAS_SIM_MODELS=" + base, "MAAS_SIM_EMBEDDING_MODELS=",
				"MAAS_SIM_TTFT=5ms", "MAAS_SIM_ITL=1ms", "MAAS_SIM_ITL_JITTER=0s",
				"MAAS_HEARTBEAT_INTERVAL=" + heartbeat.String(), "MAAS_SIM_MAX_LORAS=1",
				"MAAS_ADAPTER_CACHE_DIR=" + cache}, "http://"+waddr+"/health")
		if err != nil {
			return nil, err
		}
		s.sims = append(s.sims, simAddr)
		s.workers = append(s.workers, w)
	}
	if err := waitServes(ctx, e.gateway.Addr, t.key, base); err != nil {
		return nil, err
	}
	return s, nil
}

// fineTune uploads a small dataset, fine-tunes base and returns the new model and the
// job's finished_at (control's clock, on this machine).
func (e *env) fineTune(ctx context.Context, t *tuneShared, base, suffix string) (string, time.Time, error) {
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	_ = mw.WriteField("purpose", "fine-tune")
	fw, _ := mw.CreateFormFile("file", "train.jsonl")
	_, _ = fw.Write([]byte(strings.Repeat(`{"messages":[{"role":"user","content":"Hi"},{"role":"assistant","content":"Hello"}]}`+"\n", 2)))
	_ = mw.Close()
	req, _ := http.NewRequestWithContext(ctx, "POST", e.controlURL+"/v1/files", &body)
	req.Header.Set("Authorization", "Bearer "+t.token)
	req.Header.Set("Content-Type", mw.FormDataContentType())
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", time.Time{}, err
	}
	var file struct {
		ID string `json:"id"`
	}
	err = json.NewDecoder(resp.Body).Decode(&file)
	resp.Body.Close()
	if err != nil || file.ID == "" {
		return "", time.Time{}, fmt.Errorf("dataset upload: %s (%v)", resp.Status, err)
	}
	var job struct {
		ID             string  `json:"id"`
		Status         string  `json:"status"`
		FineTunedModel *string `json:"fine_tuned_model"`
	}
	err = e.controlJSON(ctx, "POST", "/v1/fine_tuning/jobs", t.token, map[string]any{"model": base, "training_file": file.ID, "suffix": suffix,
		"method": map[string]any{"type": "supervised", "supervised": map[string]any{"hyperparameters": map[string]any{"n_epochs": 1, "batch_size": 1}}}}, 200, &job)
	if err != nil {
		return "", time.Time{}, err
	}
	deadline := time.Now().Add(30 * time.Second)
	for job.Status != "succeeded" {
		if job.Status == "failed" || job.Status == "cancelled" || time.Now().After(deadline) {
			return "", time.Time{}, fmt.Errorf("job %s: %s", job.ID, job.Status)
		}
		time.Sleep(20 * time.Millisecond)
		if err := e.controlJSON(ctx, "GET", "/v1/fine_tuning/jobs/"+job.ID, t.token, nil, 200, &job); err != nil {
			return "", time.Time{}, err
		}
	}
	var finished time.Time
	if err := e.db.QueryRow(ctx, `SELECT finished_at FROM fine_tuning_jobs WHERE id = $1`, job.ID).Scan(&finished); err != nil {
		return "", time.Time{}, fmt.Errorf("job %s: finished_at: %w", job.ID, err)
	}
	return *job.FineTunedModel, finished, nil
}

// firstToken asks addr for a one-token stream of model every 10 ms until a token
// arrives, and returns when it did.
func firstToken(ctx context.Context, addr, key, model string, timeout time.Duration) (time.Time, error) {
	body := chatBody(model, 1, true)
	deadline := time.Now().Add(timeout)
	var last string
	for time.Now().Before(deadline) && ctx.Err() == nil {
		req, _ := http.NewRequestWithContext(ctx, "POST", "http://"+addr+"/v1/chat/completions", bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		if key != "" {
			req.Header.Set("Authorization", "Bearer "+key)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			last = err.Error()
		} else {
			if resp.StatusCode == 200 {
				sc := bufio.NewScanner(resp.Body)
				for sc.Scan() {
					data, ok := strings.CutPrefix(sc.Text(), "data: ")
					if !ok || data == "[DONE]" {
						continue
					}
					var c struct {
						Model   string `json:"model"`
						Choices []struct {
							Delta struct {
								Content string `json:"content"`
							} `json:"delta"`
						} `json:"choices"`
					}
					if json.Unmarshal([]byte(data), &c) == nil && c.Model == model && len(c.Choices) > 0 && c.Choices[0].Delta.Content != "" {
						at := time.Now()
						io.Copy(io.Discard, resp.Body)
						resp.Body.Close()
						return at, nil
					}
				}
				last = "a stream without a token"
			} else {
				b, _ := io.ReadAll(resp.Body)
				last = fmt.Sprintf("%s %s", resp.Status, bytes.TrimSpace(b))
			}
			resp.Body.Close()
		}
		time.Sleep(10 * time.Millisecond)
	}
	return time.Time{}, fmt.Errorf("%s never streamed a token of %s: %s", addr, model, last)
}

func (e *env) tuneToFirstToken(ctx context.Context, sc *report.Scenario) error {
	t, err := e.tuneSetup(ctx)
	if err != nil {
		return err
	}
	s := t.stacks[tuneBase]
	if s == nil {
		if s, err = e.startTuneStack(ctx, t, tuneBase, 2, 2*time.Second); err != nil {
			return err
		}
		t.stacks[tuneBase] = s
	}
	worst := time.Duration(0)
	for len(s.adapters) < 2 {
		model, succeeded, err := e.fineTune(ctx, t, tuneBase, fmt.Sprintf("a%d", len(s.adapters)+1))
		if err != nil {
			return err
		}
		s.adapters = append(s.adapters, model)
		// Every backend of the base, and the gateway, asked at once.
		targets := append(append([]string(nil), s.sims...), e.gateway.Addr)
		at := make([]time.Time, len(targets))
		errs := make([]error, len(targets))
		var wg sync.WaitGroup
		for i, addr := range targets {
			key := ""
			if addr == e.gateway.Addr {
				key = t.key
			}
			wg.Go(func() { at[i], errs[i] = firstToken(ctx, addr, key, model, 30*time.Second) })
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			return err
		}
		var parts []string
		every := time.Duration(0)
		for i := range s.sims {
			d := at[i].Sub(succeeded)
			every = max(every, d)
			parts = append(parts, fmt.Sprintf("backend %d %.2f s", i+1, d.Seconds()))
		}
		worst = max(worst, every)
		slot := "a free LoRA slot"
		if len(s.adapters) > 1 {
			slot = "its slot taken from the previous adapter"
		}
		sc.Notes = append(sc.Notes, fmt.Sprintf("%s (%s): succeeded → first token on every backend %.2f s (%s); through the gateway %.2f s",
			model, slot, every.Seconds(), strings.Join(parts, ", "), at[len(at)-1].Sub(succeeded).Seconds()))
	}
	sc.Targets = append(sc.Targets, report.Target{Name: "job succeeded → first token on every backend of its base (worst of two jobs)",
		Value: worst.Seconds(), Limit: 5, Unit: "s", Max: true})
	return nil
}

// coldLoad waits until s's first adapter is loaded nowhere (the second evicted it from
// every one-slot backend) and the gateway routes it nowhere, then asks for it through the
// gateway and times the answer.
func (e *env) coldLoad(ctx context.Context, sc *report.Scenario, s *tuneStack) error {
	model := s.adapters[0]
	deadline := time.Now().Add(30 * time.Second)
	for {
		loaded := false
		for _, addr := range s.sims {
			ms, err := simModelList(ctx, addr)
			if err != nil {
				return err
			}
			loaded = loaded || strings.Contains(" "+strings.Join(ms, " ")+" ", " "+model+" ")
		}
		routed, err := labelledMetric(ctx, "http://"+e.gateway.Addr+"/metrics", `maas_gateway_model_healthy_backends{model="`+model+`"}`)
		if err != nil {
			return err
		}
		if !loaded && routed == 0 {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s still loaded (%v) or routed by the gateway (%v backends)", model, loaded, routed)
		}
		time.Sleep(20 * time.Millisecond)
	}
	body := chatBody(model, 3, false)
	req, _ := http.NewRequestWithContext(ctx, "POST", "http://"+e.gateway.Addr+"/v1/chat/completions", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+e.tune.key)
	start := time.Now()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	took := time.Since(start)
	var a struct {
		Model string `json:"model"`
	}
	if resp.StatusCode != 200 || json.Unmarshal(raw, &a) != nil || a.Model != model {
		return fmt.Errorf("%s through the gateway: %s %s", model, resp.Status, raw)
	}
	sc.Notes = append(sc.Notes, fmt.Sprintf("%s, loaded nowhere: request to answer through the gateway %.2f s (the simulator's own load is near zero)", model, took.Seconds()))
	sc.Targets = append(sc.Targets, report.Target{Name: "cold on-demand adapter load, request to answer (2 s + the engine's load, ~0 here)",
		Value: took.Seconds(), Limit: 2, Unit: "s", Max: true})
	return nil
}

func simModelList(ctx context.Context, addr string) ([]string, error) {
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+addr+"/v1/models", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var l struct {
		Data []struct {
			ID string `json:"id"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&l); err != nil {
		return nil, fmt.Errorf("%s models: %s: %w", addr, resp.Status, err)
	}
	var out []string
	for _, m := range l.Data {
		out = append(out, m.ID)
	}
	return out, nil
}

// labelledMetric reads one series (name with its labels) from a /metrics page; a series
// not exported reads 0.
func labelledMetric(ctx context.Context, u, series string) (float64, error) {
	req, _ := http.NewRequestWithContext(ctx, "GET", u, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			var f float64
			_, err := fmt.Sscan(v, &f)
			return f, err
		}
	}
	return 0, nil
}
