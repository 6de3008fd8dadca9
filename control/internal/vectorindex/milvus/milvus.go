package milvus

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/milvus-io/milvus/client/v2/column"
	"github.com/milvus-io/milvus/client/v2/entity"
	"github.com/milvus-io/milvus/client/v2/index"
	"github.com/milvus-io/milvus/client/v2/milvusclient"
	"github.com/milvus-io/milvus/pkg/v2/util/merr"
	"google.golang.org/grpc"

	"github.com/maas-platform/maas/control/internal/vectorindex"
)

// ErrNotConnected is returned (wrapped, with the address and the last dial error) by every
// call made before the first connection to Milvus succeeded. It wraps
// vectorindex.ErrUnavailable.
var ErrNotConnected = fmt.Errorf("milvus: not connected: %w", vectorindex.ErrUnavailable)

const (
	// maxTopK is Milvus's default bound on topk.
	maxTopK = 16384
	// attrsPage is how many rows SetAttributes reads at once (384 dims: 6 MiB of vectors).
	attrsPage = 4096
	// tieMargin is how many results beyond k a search asks for, so that chunks tied at the
	// k-th score can be ordered by chunk id as the contract says (Milvus orders ties
	// arbitrarily).
	tieMargin = 16
	// upsertBatch bounds the rows of one Upsert call (384 dims: about 1.5 MiB of vectors).
	upsertBatch = 1000
)

// Options configures an Index.
type Options struct {
	// Addr is Milvus's address, host:port or a URL (MAAS_MILVUS_ADDR); required.
	Addr string
	// Token is an API key or "user:password" token (MAAS_MILVUS_TOKEN); it overrides
	// Username and Password.
	Token string
	// Username and Password authenticate when Milvus requires it (MAAS_MILVUS_USERNAME,
	// MAAS_MILVUS_PASSWORD).
	Username, Password string
	// DBName is the Milvus database ("default" when empty; MAAS_MILVUS_DB).
	DBName string
	// CollectionPrefix names the collections: one per vector length, <prefix>_<dims>
	// ("maas_chunks" when empty, e.g. maas_chunks_384).
	CollectionPrefix string
	// DialTimeout bounds one connection attempt (10s when zero). Attempts repeat in the
	// background, 0.5s apart doubling to 30s, until one succeeds or Stop is called.
	DialTimeout time.Duration
	// Logger receives connection and collection events (discarded when nil).
	Logger *slog.Logger
	// DialOptions are added to the client's gRPC dial options (tests).
	DialOptions []grpc.DialOption
}

// Index is the Milvus vectorindex.Index: one collection per vector length with the store id
// as partition key, COSINE, attributes in a JSON field. Safe for concurrent use. Its zero
// value is not usable: build one with New.
type Index struct {
	opts Options
	log  *slog.Logger

	client  atomic.Pointer[milvusclient.Client]
	lastErr atomic.Pointer[string]
	ready   chan struct{} // closed once client is set
	cancel  context.CancelFunc
	done    chan struct{} // closed when the connect loop returned
	stop    sync.Once

	mu      sync.Mutex
	ensured map[int]bool // vector lengths whose collection exists, is indexed and loaded
}

var _ vectorindex.Index = (*Index)(nil)

// New returns an Index and starts connecting in the background: it never blocks, and calls
// made before the connection succeeded fail with ErrNotConnected.
func New(o Options) (*Index, error) {
	if strings.TrimSpace(o.Addr) == "" {
		return nil, errors.New("milvus: address is empty")
	}
	if o.CollectionPrefix == "" {
		o.CollectionPrefix = "maas_chunks"
	}
	if o.DialTimeout <= 0 {
		o.DialTimeout = 10 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	x := &Index{
		opts:    o,
		log:     o.Logger.With("component", "milvus", "addr", o.Addr),
		ready:   make(chan struct{}),
		cancel:  cancel,
		done:    make(chan struct{}),
		ensured: map[int]bool{},
	}
	go x.connectLoop(ctx)
	return x, nil
}

func (x *Index) connectLoop(ctx context.Context) {
	defer close(x.done)
	backoff := 500 * time.Millisecond
	for attempt := 1; ; attempt++ {
		c, err := x.dial(ctx)
		if err == nil {
			x.client.Store(c)
			close(x.ready)
			x.log.Info("milvus connected", "attempts", attempt)
			return
		}
		if ctx.Err() != nil {
			return
		}
		msg := err.Error()
		x.lastErr.Store(&msg)
		x.log.Warn("milvus connect failed", "attempt", attempt, "retry_in", backoff, "err", err)
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		backoff = min(backoff*2, 30*time.Second)
	}
}

func (x *Index) dial(ctx context.Context) (*milvusclient.Client, error) {
	ctx, cancel := context.WithTimeout(ctx, x.opts.DialTimeout)
	defer cancel()
	cfg := &milvusclient.ClientConfig{
		Address:     x.opts.Addr,
		Username:    x.opts.Username,
		Password:    x.opts.Password,
		DBName:      x.opts.DBName,
		APIKey:      x.opts.Token,
		DialOptions: x.opts.DialOptions,
	}
	return milvusclient.New(ctx, cfg)
}

// Ready waits until the first connection succeeded (nil) or ctx ends (its error).
func (x *Index) Ready(ctx context.Context) error {
	select {
	case <-x.ready:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Stop ends the connect loop and closes the connection. Idempotent.
func (x *Index) Stop(ctx context.Context) error {
	var err error
	x.stop.Do(func() {
		x.cancel()
		select {
		case <-x.done:
		case <-ctx.Done():
			err = ctx.Err()
			return
		}
		if c := x.client.Load(); c != nil {
			err = c.Close(ctx)
		}
	})
	return err
}

func (x *Index) conn() (*milvusclient.Client, error) {
	if c := x.client.Load(); c != nil {
		return c, nil
	}
	last := "none yet"
	if p := x.lastErr.Load(); p != nil {
		last = *p
	}
	return nil, fmt.Errorf("%w (address %s, last attempt: %s)", ErrNotConnected, x.opts.Addr, last)
}

func (x *Index) collection(dims int) string {
	return x.opts.CollectionPrefix + "_" + strconv.Itoa(dims)
}

// dimsOf parses a collection name of this index back into its vector length.
func (x *Index) dimsOf(name string) (int, bool) {
	rest, ok := strings.CutPrefix(name, x.opts.CollectionPrefix+"_")
	if !ok {
		return 0, false
	}
	d, err := strconv.Atoi(rest)
	if err != nil || d <= 0 || strconv.Itoa(d) != rest {
		return 0, false
	}
	return d, true
}

// collections lists the vector lengths that have a collection.
func (x *Index) collections(ctx context.Context, c *milvusclient.Client) ([]int, error) {
	names, err := c.ListCollections(ctx, milvusclient.NewListCollectionOption())
	if err != nil {
		return nil, fmt.Errorf("milvus: list collections: %w", err)
	}
	var out []int
	for _, n := range names {
		if d, ok := x.dimsOf(n); ok {
			out = append(out, d)
		}
	}
	slices.Sort(out)
	return out, nil
}

func (x *Index) schema(dims int) *entity.Schema {
	return entity.NewSchema().WithName(x.collection(dims)).
		WithDescription("maas vector store chunks").
		WithField(entity.NewField().WithName(fieldPK).WithDataType(entity.FieldTypeVarChar).WithMaxLength(maxPKLen).WithIsPrimaryKey(true)).
		WithField(entity.NewField().WithName(fieldStore).WithDataType(entity.FieldTypeVarChar).WithMaxLength(maxIDLen).WithIsPartitionKey(true)).
		WithField(entity.NewField().WithName(fieldFile).WithDataType(entity.FieldTypeVarChar).WithMaxLength(maxIDLen)).
		WithField(entity.NewField().WithName(fieldChunk).WithDataType(entity.FieldTypeVarChar).WithMaxLength(maxIDLen)).
		WithField(entity.NewField().WithName(fieldAttrs).WithDataType(entity.FieldTypeJSON)).
		WithField(entity.NewField().WithName(fieldVector).WithDataType(entity.FieldTypeFloatVector).WithDim(int64(dims)))
}

// ensure makes the collection of dims exist (when create is set), indexed (AUTOINDEX,
// COSINE) and loaded. Replicas racing here all succeed: a collection created meanwhile is
// used, an index is created only where none is listed, and loading is idempotent. It
// reports false when the collection does not exist and create is not set.
func (x *Index) ensure(ctx context.Context, c *milvusclient.Client, dims int, create bool) (bool, error) {
	x.mu.Lock()
	done := x.ensured[dims]
	x.mu.Unlock()
	if done {
		return true, nil
	}
	name := x.collection(dims)
	has, err := c.HasCollection(ctx, milvusclient.NewHasCollectionOption(name))
	if err != nil {
		return false, fmt.Errorf("milvus: describe %s: %w", name, err)
	}
	if !has {
		if !create {
			return false, nil
		}
		err := c.CreateCollection(ctx, milvusclient.NewCreateCollectionOption(name, x.schema(dims)).
			WithConsistencyLevel(entity.ClStrong))
		if err != nil {
			// Another replica may have created it meanwhile.
			if has, herr := c.HasCollection(ctx, milvusclient.NewHasCollectionOption(name)); herr != nil || !has {
				return false, fmt.Errorf("milvus: create %s: %w", name, err)
			}
		} else {
			x.log.Info("milvus collection created", "collection", name, "dims", dims)
		}
	}
	// An existing index is kept as it is (an operator may have chosen another type); only a
	// missing one is created.
	indexes, err := c.ListIndexes(ctx, milvusclient.NewListIndexOption(name).WithFieldName(fieldVector))
	if err != nil && !errors.Is(err, merr.ErrIndexNotFound) {
		return false, fmt.Errorf("milvus: list indexes of %s: %w", name, err)
	}
	if len(indexes) == 0 {
		task, err := c.CreateIndex(ctx, milvusclient.NewCreateIndexOption(name, fieldVector, index.NewAutoIndex(entity.COSINE)))
		if err != nil {
			return false, fmt.Errorf("milvus: index %s: %w", name, err)
		}
		if err := task.Await(ctx); err != nil {
			return false, fmt.Errorf("milvus: index %s: %w", name, err)
		}
	}
	load, err := c.LoadCollection(ctx, milvusclient.NewLoadCollectionOption(name))
	if err != nil {
		return false, fmt.Errorf("milvus: load %s: %w", name, err)
	}
	if err := load.Await(ctx); err != nil {
		return false, fmt.Errorf("milvus: load %s: %w", name, err)
	}
	x.mu.Lock()
	x.ensured[dims] = true
	x.mu.Unlock()
	return true, nil
}

// forget drops what is known of a collection after an error on it (it may have been
// dropped or released behind our back): the next call checks it again.
func (x *Index) forget(dims int) {
	x.mu.Lock()
	delete(x.ensured, dims)
	x.mu.Unlock()
}

// storeHasOtherDims reports whether store has chunks in a collection of another length
// than dims.
func (x *Index) storeHasOtherDims(ctx context.Context, c *milvusclient.Client, store string, dims int) (bool, error) {
	all, err := x.collections(ctx, c)
	if err != nil {
		return false, err
	}
	for _, d := range all {
		if d == dims {
			continue
		}
		if ok, err := x.ensure(ctx, c, d, false); err != nil || !ok {
			if err != nil {
				return false, err
			}
			continue
		}
		rs, err := c.Query(ctx, milvusclient.NewQueryOption(x.collection(d)).
			WithFilter(storeExpr(store)).WithOutputFields(fieldPK).WithLimit(1).
			WithConsistencyLevel(entity.ClStrong))
		if err != nil {
			x.forget(d)
			return false, fmt.Errorf("milvus: query %s: %w", x.collection(d), err)
		}
		if rs.ResultCount > 0 {
			return true, nil
		}
	}
	return false, nil
}

func checkIDs(ids ...string) error {
	for _, id := range ids {
		if len(id) > maxIDLen {
			return fmt.Errorf("id of %d bytes (at most %d): %w", len(id), maxIDLen, vectorindex.ErrInvalid)
		}
	}
	return nil
}

// Upsert implements vectorindex.Index.
func (x *Index) Upsert(ctx context.Context, chunks []vectorindex.Chunk) error {
	if len(chunks) == 0 {
		return nil
	}
	if err := vectorindex.ValidateChunks(chunks); err != nil {
		return err
	}
	attrs := make([][]byte, len(chunks))
	byDims := map[int][]int{}
	storeDims := map[string]int{}
	for i := range chunks {
		ch := &chunks[i]
		if err := checkIDs(ch.StoreID, ch.FileID, ch.ChunkID); err != nil {
			return err
		}
		b, err := encodeAttrs(ch.Attributes, "")
		if err != nil {
			return err
		}
		attrs[i] = b
		byDims[len(ch.Vector)] = append(byDims[len(ch.Vector)], i)
		storeDims[ch.StoreID] = len(ch.Vector)
	}
	c, err := x.conn()
	if err != nil {
		return err
	}
	for store, d := range storeDims {
		other, err := x.storeHasOtherDims(ctx, c, store, d)
		if err != nil {
			return err
		}
		if other {
			return fmt.Errorf("upsert into %s with %d dimensions: %w", store, d, vectorindex.ErrDimensions)
		}
	}
	for d, rows := range byDims {
		if _, err := x.ensure(ctx, c, d, true); err != nil {
			return err
		}
		for start := 0; start < len(rows); start += upsertBatch {
			part := rows[start:min(start+upsertBatch, len(rows))]
			n := len(part)
			pks, stores, files, ids := make([]string, n), make([]string, n), make([]string, n), make([]string, n)
			js, vecs := make([][]byte, n), make([][]float32, n)
			for j, i := range part {
				ch := &chunks[i]
				pks[j], stores[j], files[j], ids[j] = pk(ch.StoreID, ch.ChunkID), ch.StoreID, ch.FileID, ch.ChunkID
				js[j], vecs[j] = attrs[i], ch.Vector
			}
			if err := x.upsertRows(ctx, c, d, pks, stores, files, ids, js, vecs); err != nil {
				return err
			}
		}
	}
	return nil
}

func (x *Index) upsertRows(ctx context.Context, c *milvusclient.Client, dims int, pks, stores, files, ids []string, attrs [][]byte, vecs [][]float32) error {
	name := x.collection(dims)
	opt := milvusclient.NewColumnBasedInsertOption(name).
		WithVarcharColumn(fieldPK, pks).
		WithVarcharColumn(fieldStore, stores).
		WithVarcharColumn(fieldFile, files).
		WithVarcharColumn(fieldChunk, ids).
		WithColumns(column.NewColumnJSONBytes(fieldAttrs, attrs)).
		WithFloatVectorColumn(fieldVector, dims, vecs)
	if _, err := c.Upsert(ctx, opt); err != nil {
		x.forget(dims)
		return fmt.Errorf("milvus: upsert %d rows into %s: %w", len(pks), name, err)
	}
	return nil
}

// SetAttributes implements vectorindex.Index. Milvus cannot update a field by expression,
// so the file's rows are read and upserted again with the new attributes, a page at a time.
// The new attributes carry a random generation mark, and each page asks only for rows
// without it, so pages need no order and a file of any size is covered.
func (x *Index) SetAttributes(ctx context.Context, storeID, fileID string, attrs map[string]any) error {
	if storeID == "" || fileID == "" {
		return vectorindex.ErrInvalid
	}
	if err := vectorindex.ValidateAttributes(attrs); err != nil {
		return err
	}
	var b [8]byte
	_, _ = rand.Read(b[:])
	gen := hex.EncodeToString(b[:])
	js, err := encodeAttrs(attrs, gen)
	if err != nil {
		return err
	}
	c, err := x.conn()
	if err != nil {
		return err
	}
	all, err := x.collections(ctx, c)
	if err != nil {
		return err
	}
	expr := fileExpr(storeID, fileID) + " and " + notGenExpr(gen)
	for _, d := range all {
		if ok, err := x.ensure(ctx, c, d, false); err != nil || !ok {
			if err != nil {
				return err
			}
			continue
		}
		done := map[string]bool{} // rewritten rows: one seen again means the mark is not read
		for {
			n, err := x.rewritePage(ctx, c, d, expr, storeID, fileID, js, done)
			if err != nil {
				return err
			}
			if n < attrsPage {
				break
			}
		}
	}
	return nil
}

// rewritePage upserts with attrs up to attrsPage rows of the file matching expr and
// returns how many it found. done holds the primary keys rewritten so far: finding one of
// them again is an error rather than an endless loop.
func (x *Index) rewritePage(ctx context.Context, c *milvusclient.Client, dims int, expr, storeID, fileID string, attrs []byte, done map[string]bool) (int, error) {
	name := x.collection(dims)
	rs, err := c.Query(ctx, milvusclient.NewQueryOption(name).
		WithFilter(expr).
		WithOutputFields(fieldPK, fieldChunk, fieldVector).
		WithLimit(attrsPage).WithConsistencyLevel(entity.ClStrong))
	if err != nil {
		x.forget(dims)
		return 0, fmt.Errorf("milvus: query %s: %w", name, err)
	}
	if rs.ResultCount == 0 {
		return 0, nil
	}
	pks, err := varchars(rs, fieldPK)
	if err != nil {
		return 0, err
	}
	ids, err := varchars(rs, fieldChunk)
	if err != nil {
		return 0, err
	}
	vc, ok := rs.GetColumn(fieldVector).(*column.ColumnFloatVector)
	if !ok || vc.Len() != len(pks) {
		return 0, fmt.Errorf("milvus: query %s: no %s column of %d rows", name, fieldVector, len(pks))
	}
	n := len(pks)
	for _, k := range pks {
		if done[k] {
			return 0, fmt.Errorf("milvus: set attributes of file %s in %s: a rewritten row is read again as unmarked", fileID, name)
		}
	}
	stores, files, jss, vecs := make([]string, n), make([]string, n), make([][]byte, n), make([][]float32, n)
	for i, v := range vc.Data() {
		stores[i], files[i], jss[i], vecs[i] = storeID, fileID, attrs, v
	}
	for start := 0; start < n; start += upsertBatch {
		end := min(start+upsertBatch, n)
		if err := x.upsertRows(ctx, c, dims, pks[start:end], stores[start:end], files[start:end], ids[start:end], jss[start:end], vecs[start:end]); err != nil {
			return 0, err
		}
	}
	for _, k := range pks {
		done[k] = true
	}
	return n, nil
}

func varchars(rs milvusclient.ResultSet, field string) ([]string, error) {
	col, ok := rs.GetColumn(field).(*column.ColumnVarChar)
	if !ok {
		return nil, fmt.Errorf("milvus: result without a %s column", field)
	}
	if col.Len() != rs.ResultCount {
		return nil, fmt.Errorf("milvus: %s column of %d rows in a result of %d", field, col.Len(), rs.ResultCount)
	}
	return col.Data(), nil
}

// DeleteFile implements vectorindex.Index.
func (x *Index) DeleteFile(ctx context.Context, storeID, fileID string) error {
	if storeID == "" || fileID == "" {
		return vectorindex.ErrInvalid
	}
	return x.deleteWhere(ctx, fileExpr(storeID, fileID))
}

// DeleteStore implements vectorindex.Index.
func (x *Index) DeleteStore(ctx context.Context, storeID string) error {
	if storeID == "" {
		return vectorindex.ErrInvalid
	}
	return x.deleteWhere(ctx, storeExpr(storeID))
}

// deleteWhere deletes the rows matching expr in every collection of this index (a store
// lives in one, but which one is not recorded).
func (x *Index) deleteWhere(ctx context.Context, expr string) error {
	c, err := x.conn()
	if err != nil {
		return err
	}
	all, err := x.collections(ctx, c)
	if err != nil {
		return err
	}
	for _, d := range all {
		name := x.collection(d)
		if _, err := c.Delete(ctx, milvusclient.NewDeleteOption(name).WithExpr(expr)); err != nil {
			x.forget(d)
			return fmt.Errorf("milvus: delete from %s: %w", name, err)
		}
	}
	return nil
}

// Search implements vectorindex.Index. The filter is part of Milvus's boolean expression,
// which Milvus applies before it ranks (filtered search), so k results come back whenever
// k chunks match.
func (x *Index) Search(ctx context.Context, q vectorindex.Query) ([]vectorindex.Hit, error) {
	if err := vectorindex.ValidateQuery(q); err != nil {
		return nil, err
	}
	expr, err := searchExpr(q.StoreID, q.Filter)
	if err != nil {
		return nil, err
	}
	c, err := x.conn()
	if err != nil {
		return nil, err
	}
	dims := len(q.Vector)
	ok, err := x.ensure(ctx, c, dims, false)
	if err != nil {
		return nil, err
	}
	var hits []vectorindex.Hit
	if ok {
		name := x.collection(dims)
		limit := min(q.K+tieMargin, maxTopK)
		rss, err := c.Search(ctx, milvusclient.NewSearchOption(name, limit, []entity.Vector{entity.FloatVector(q.Vector)}).
			WithANNSField(fieldVector).WithFilter(expr).
			WithOutputFields(fieldFile, fieldChunk).
			WithConsistencyLevel(entity.ClStrong))
		if err != nil {
			x.forget(dims)
			return nil, fmt.Errorf("milvus: search %s: %w", name, err)
		}
		if len(rss) != 1 {
			return nil, fmt.Errorf("milvus: search %s: %d result sets for one query", name, len(rss))
		}
		rs := rss[0]
		if rs.Err != nil {
			return nil, fmt.Errorf("milvus: search %s: %w", name, rs.Err)
		}
		files, err := varchars(rs, fieldFile)
		if err != nil {
			return nil, err
		}
		ids, err := varchars(rs, fieldChunk)
		if err != nil {
			return nil, err
		}
		if len(rs.Scores) != rs.ResultCount {
			return nil, fmt.Errorf("milvus: search %s: %d scores for %d results", name, len(rs.Scores), rs.ResultCount)
		}
		hits = make([]vectorindex.Hit, rs.ResultCount)
		for i := range hits {
			hits[i] = vectorindex.Hit{FileID: files[i], ChunkID: ids[i], Score: rs.Scores[i]}
		}
		slices.SortFunc(hits, func(a, b vectorindex.Hit) int {
			if c := cmp.Compare(b.Score, a.Score); c != 0 {
				return c
			}
			return cmp.Compare(a.ChunkID, b.ChunkID)
		})
		hits = hits[:min(len(hits), q.K)]
	}
	if len(hits) == 0 {
		// Nothing with this length: the store may hold vectors of another one.
		other, err := x.storeHasOtherDims(ctx, c, q.StoreID, dims)
		if err != nil {
			return nil, err
		}
		if other {
			return nil, fmt.Errorf("search %s with %d dimensions: %w", q.StoreID, dims, vectorindex.ErrDimensions)
		}
		return []vectorindex.Hit{}, nil
	}
	return hits, nil
}
