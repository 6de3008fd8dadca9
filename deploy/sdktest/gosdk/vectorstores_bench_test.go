package gosdk

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"

	"github.com/maas-platform/maas/pkg/testenv"
)

// BenchmarkIngestThroughGateway measures ingestion through the real processes: files of
// chunk-sized paragraphs (static chunking, 100 tokens, no overlap) attached to one store,
// embedded by the simulator (384 dimensions) through the gateway as the owner, until every
// file is completed. It reports chunks per second and control's resident memory before and
// after a search loaded the store into the embedded index. MAAS_BENCH_INGEST_CHUNKS sets
// the chunks (20,000 by default; files of at most 20,000 chunks each).
//
//	go test -run '^$' -bench IngestThroughGateway -benchtime 1x ./deploy/sdktest/gosdk/
func BenchmarkIngestThroughGateway(b *testing.B) {
	total := 20000
	if v, err := strconv.Atoi(os.Getenv("MAAS_BENCH_INGEST_CHUNKS")); err == nil && v > 0 {
		total = v
	}
	p := testenv.NewPlatform(b, testenv.Options{})
	files := b.TempDir()
	p.StartControl("MAAS_FILES_DIR=" + files)
	p.StartWorker([]string{"--engine", "sim"}, "MAAS_SIM_ADDR="+testenv.FreeAddr(b), "MAAS_HEARTBEAT_INTERVAL=500ms")
	proc, gw := p.StartGateway("MAAS_ACCESS_LOG=false")
	testenv.WaitHTTP(b, proc, gw+"/ready", 30*time.Second)
	p.Control.Stop(10 * time.Second)
	p.StartControl("MAAS_FILES_DIR="+files, "MAAS_GATEWAY_URL="+gw, "MAAS_LOG_LEVEL=warn")
	admin := p.AdminToken()
	key := p.CreateKey(admin, map[string]any{"name": "bench"})
	c := openai.NewClient(option.WithBaseURL(gw+"/v1/"), option.WithAPIKey(key), option.WithMaxRetries(3), option.WithRequestTimeout(5*time.Minute))
	ctx := context.Background()

	words := strings.Fields("harbour lamp tide wick lens fog horn keeper stair window gull rock shore wave storm light beam night watch rope brass oil glass tower cliff")
	rng := rand.New(rand.NewPCG(3, 5))
	var ids []string
	for left, n := total, 0; left > 0; n++ {
		chunks := min(left, 20000)
		left -= chunks
		var sb strings.Builder
		for range chunks {
			para := 0
			for para < 360 {
				w := words[rng.IntN(len(words))]
				sb.WriteString(w)
				sb.WriteByte(' ')
				para += len(w) + 1
			}
			sb.WriteString("\n\n")
		}
		var f *openai.FileObject
		var err error
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			f, err = c.Files.New(ctx, openai.FileNewParams{File: openai.File(strings.NewReader(sb.String()), fmt.Sprintf("part%d.txt", n), "text/plain"),
				Purpose: openai.FilePurposeAssistants})
			if err == nil || time.Now().After(deadline) {
				break
			}
		}
		if err != nil {
			b.Fatal(err)
		}
		ids = append(ids, f.ID)
	}
	rssBefore := rssMiB(b, p.Control)
	b.ResetTimer()
	start := time.Now()
	vs, err := c.VectorStores.New(ctx, openai.VectorStoreNewParams{FileIDs: ids,
		ChunkingStrategy: openai.FileChunkingStrategyParamUnion{OfStatic: &openai.StaticFileChunkingStrategyObjectParam{
			Static: openai.StaticFileChunkingStrategyParam{MaxChunkSizeTokens: 100, ChunkOverlapTokens: 0}}}})
	if err != nil {
		b.Fatal(err)
	}
	for {
		s, err := c.VectorStores.Get(ctx, vs.ID)
		if err != nil {
			b.Fatal(err)
		}
		if s.FileCounts.InProgress == 0 {
			if s.FileCounts.Completed != int64(len(ids)) {
				b.Fatalf("store: %s", s.RawJSON())
			}
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	elapsed := time.Since(start)
	b.StopTimer()
	if _, err := c.VectorStores.Search(ctx, vs.ID, openai.VectorStoreSearchParams{Query: openai.VectorStoreSearchParamsQueryUnion{OfString: openai.String("storm over the harbour")}}); err != nil {
		b.Fatal(err)
	}
	t0 := time.Now()
	if _, err := c.VectorStores.Search(ctx, vs.ID, openai.VectorStoreSearchParams{Query: openai.VectorStoreSearchParamsQueryUnion{OfString: openai.String("lamp wick keeper")}}); err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(total)/elapsed.Seconds(), "chunks/s")
	b.ReportMetric(float64(time.Since(t0).Microseconds())/1000, "search_ms")
	b.ReportMetric(rssBefore, "control_rss_MiB_before")
	b.ReportMetric(rssMiB(b, p.Control), "control_rss_MiB_loaded")
}

// rssMiB reads a process's resident memory from /proc.
func rssMiB(b *testing.B, p *testenv.Proc) float64 {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.Cmd.Process.Pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, l := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			kb, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			return float64(kb) / 1024
		}
	}
	return 0
}
