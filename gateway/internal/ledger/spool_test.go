package ledger

import (
	"bufio"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func readLines(t *testing.T, path string) []string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	return lines
}

func TestRecordEncoding(t *testing.T) {
	r := Record{RequestID: "gw-1", ClientRequestID: "c-1", CreatedAt: time.Date(2026, 11, 30, 1, 2, 3, 456789, time.UTC),
		UserID: 7, KeyID: -1, Model: "m/ü", Backend: "b", Endpoint: "/v1/chat/completions", Status: 499,
		PromptTokens: 1 << 31, CompletionTokens: 5, Estimated: true, Streamed: true, TTFT: -1, Duration: 3 * time.Second, ErrorType: "e"}
	got, err := decodeRecord(encodeRecord(nil, &r))
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(r, got); diff != "" {
		t.Errorf("round trip (-want +got):\n%s", diff)
	}
	b := encodeRecord(nil, &r)
	for i := range len(b) - 1 {
		if _, err := decodeRecord(b[:i]); err == nil {
			t.Errorf("a record cut at %d bytes decodes", i)
		}
	}
}

func TestSpoolTornTailIsSkippedAndCounted(t *testing.T) {
	dir := t.TempDir()
	var torn []int64
	onTorn := func(_ uint64, n int64) { torn = append(torn, n) }
	s, err := openSpool(dir, 1<<20, 0, 0, onTorn)
	if err != nil {
		t.Fatal(err)
	}
	var recs []Record
	for i := range 10 {
		recs = append(recs, rec(i))
	}
	if err := s.append(recs[:5], nil, nil); err != nil {
		t.Fatal(err)
	}
	if err := s.append(recs[5:], nil, nil); err != nil {
		t.Fatal(err)
	}
	seg := s.path(s.segs[0])
	s.close()
	// A crash in the middle of the last record's write.
	fi, err := os.Stat(seg)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(seg, fi.Size()-3); err != nil {
		t.Fatal(err)
	}

	s, err = openSpool(dir, 1<<20, 0, 0, onTorn)
	if err != nil {
		t.Fatal(err)
	}
	if n := s.records.Load(); n != 9 {
		t.Errorf("%d records counted in the spool, want 9", n)
	}
	got, end, err := s.read(100, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 9 || got[8].RequestID != "r8" {
		t.Fatalf("read %d records", len(got))
	}
	s.consume(end, len(got))
	got, _, err = s.read(100, nil)
	if err != nil || len(got) != 0 {
		t.Fatalf("after the torn tail: %d records, %v", len(got), err)
	}
	if len(torn) != 1 || torn[0] <= 0 {
		t.Errorf("torn tails reported: %v", torn)
	}
	if _, err := os.Stat(seg); !os.IsNotExist(err) {
		t.Errorf("the read segment is still there: %v", err)
	}
	// A new append starts a new segment, read from its start.
	if err := s.append(recs[:2], nil, nil); err != nil {
		t.Fatal(err)
	}
	got, _, _ = s.read(100, nil)
	if len(got) != 2 {
		t.Errorf("read %d records after a new append, want 2", len(got))
	}
	s.close()
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 || filepath.Ext(ents[0].Name()) != ".seg" {
		t.Errorf("spool directory: %v", ents)
	}
}

func TestSpoolCursorSurvivesReopen(t *testing.T) {
	dir := t.TempDir()
	s, err := openSpool(dir, 200, 0, 0, nil) // small segments: several files
	if err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		if err := s.append([]Record{rec(i)}, nil, nil); err != nil {
			t.Fatal(err)
		}
	}
	if len(s.segs) < 3 {
		t.Fatalf("%d segments, want several", len(s.segs))
	}
	got, end, err := s.read(7, nil)
	if err != nil || len(got) == 0 {
		t.Fatal(len(got), err)
	}
	s.consume(end, len(got))
	consumed := len(got)
	seg, off := s.rseg, s.roff
	s.close()

	s, err = openSpool(dir, 200, seg, uint64(off), nil)
	if err != nil {
		t.Fatal(err)
	}
	if n := s.records.Load(); n != int64(20-consumed) {
		t.Errorf("%d records left after reopening, want %d", n, 20-consumed)
	}
	var all []Record
	for {
		got, end, err := s.read(3, nil)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) == 0 {
			break
		}
		all = append(all, got...)
		s.consume(end, len(got))
	}
	if len(all) != 20-consumed || all[0].RequestID != rec(consumed).RequestID {
		t.Errorf("read %d records after reopening, first %v", len(all), all[0].RequestID)
	}
	if s.records.Load() != 0 || s.bytes.Load() != 0 {
		t.Errorf("depth %d records %d bytes after reading everything", s.records.Load(), s.bytes.Load())
	}
	s.close()
}
