package service

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/maas-platform/maas/control/internal/vectorindex"
	"github.com/maas-platform/maas/control/internal/vectorindex/embedded"
	"github.com/maas-platform/maas/control/internal/vectorindex/milvus"
	"github.com/maas-platform/maas/control/internal/vectorindex/milvus/milvustest"
)

func TestVectorIndexChoice(t *testing.T) {
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	o, _, err := Load(nil)
	if err != nil {
		t.Fatal(err)
	}
	idx, stop, err := newVectorIndex(nil, o, quiet)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := idx.(*embedded.Index); !ok {
		t.Fatalf("without MAAS_MILVUS_ADDR: %T, want the embedded index", idx)
	}
	if err := stop(context.Background()); err != nil {
		t.Fatal(err)
	}

	srv := milvustest.Start(t)
	t.Setenv("MAAS_MILVUS_ADDR", srv.Addr())
	if o, _, err = Load(nil); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	idx, stop, err = newVectorIndex(nil, o, quiet)
	if err != nil {
		t.Fatal(err)
	}
	defer stop(context.Background())
	if d := time.Since(start); d > 100*time.Millisecond {
		t.Errorf("choosing Milvus blocked for %v", d)
	}
	m, ok := idx.(*milvus.Index)
	if !ok {
		t.Fatalf("with MAAS_MILVUS_ADDR: %T, want the Milvus index", idx)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := m.Ready(ctx); err != nil {
		t.Fatal(err)
	}
	if err := idx.Upsert(ctx, []vectorindex.Chunk{{StoreID: "vs_1", FileID: "f", ChunkID: "c", Vector: []float32{1, 0}}}); err != nil {
		t.Fatal(err)
	}
	if srv.Rows("maas_chunks_2") != 1 {
		t.Fatal("the upsert did not reach the configured Milvus")
	}
}

func TestMilvusSettings(t *testing.T) {
	t.Setenv("MAAS_MILVUS_TOKEN", "root:Milvus")
	if _, _, err := Load(nil); err == nil || !strings.Contains(err.Error(), "MAAS_MILVUS_TOKEN") {
		t.Fatalf("token without an address: %v, want an error naming MAAS_MILVUS_TOKEN", err)
	}
	t.Setenv("MAAS_MILVUS_ADDR", "milvus:19530")
	t.Setenv("MAAS_MILVUS_DB", "maas")
	o, _, err := Load(nil)
	if err != nil {
		t.Fatal(err)
	}
	if o.Milvus.Addr != "milvus:19530" || o.Milvus.Token != "root:Milvus" || o.Milvus.DB != "maas" {
		t.Fatalf("settings: %+v", o.Milvus)
	}
	for _, kv := range o.Redacted {
		if s, ok := kv.(string); ok && strings.Contains(s, "root:Milvus") {
			t.Fatal("the token appears in the start-up log line")
		}
	}
}
