// Package milvustest is an in-process Milvus for tests: a gRPC server built on the client's
// own milvuspb.UnimplementedMilvusServiceServer (the pattern of the Milvus Go client's
// tests) that implements the calls the milvus package makes, with Milvus's rules where the
// package relies on them:
//
//   - collections with a schema (VarChar primary key, partition key, JSON, FloatVector with
//     a dimension); DescribeCollection answers "collection not found" as Milvus does;
//   - CreateIndex (COSINE only; the same index again is accepted, another one refused),
//     DescribeIndex, LoadCollection and its progress; Upsert, Query and Search refuse an
//     unloaded collection, and LoadCollection refuses an unindexed one;
//   - Upsert replaces by primary key and checks every field's type and the vector length;
//     Delete, Query and Search evaluate their expression (see expr.go for the language and
//     why it is stricter than Milvus); Query and Search insist on Strong consistency (the
//     fake has no asynchronous visibility, so a read that would be stale on Milvus is
//     refused instead of silently passing);
//   - Search is exact COSINE over the rows that match the filter (the filter applied before
//     top-k), best first, ties in reverse primary-key order (Milvus promises no tie order,
//     so the client must not rely on one), at most topk ≤ 16384 results.
//
// What it does not imitate: segments, flush, approximate indexes (its search is exact),
// databases, authentication, partitions other than by key, rate limits.
package milvustest

import (
	"cmp"
	"context"
	"encoding/binary"
	"fmt"
	"math"
	"net"
	"slices"
	"strconv"
	"sync"
	"testing"

	"github.com/milvus-io/milvus-proto/go-api/v2/commonpb"
	"github.com/milvus-io/milvus-proto/go-api/v2/milvuspb"
	"github.com/milvus-io/milvus-proto/go-api/v2/schemapb"
	"github.com/milvus-io/milvus/client/v2/column"
	"github.com/milvus-io/milvus/pkg/v2/util/merr"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
)

// Server is the fake Milvus. Safe for concurrent use.
type Server struct {
	milvuspb.UnimplementedMilvusServiceServer

	lis net.Listener
	srv *grpc.Server

	mu     sync.Mutex
	colls  map[string]*collection
	nextID int64
	calls  map[string]int
}

type collection struct {
	id      int64
	schema  *schemapb.CollectionSchema
	dims    int
	metric  string // set by CreateIndex
	indexed bool
	loaded  bool
	rows    map[string]*stored // by primary key
}

type stored struct {
	row
	vec []float32
}

// New listens on a loopback port without serving yet (a client's dial waits); Serve starts
// answering. The server stops when the test ends.
func New(t testing.TB) *Server {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{lis: lis, srv: grpc.NewServer(), colls: map[string]*collection{}, calls: map[string]int{}}
	milvuspb.RegisterMilvusServiceServer(s.srv, s)
	t.Cleanup(func() {
		s.srv.Stop()
		_ = lis.Close()
	})
	return s
}

// Start returns a serving fake.
func Start(t testing.TB) *Server {
	s := New(t)
	s.Serve()
	return s
}

// Serve starts answering in the background.
func (s *Server) Serve() {
	go func() { _ = s.srv.Serve(s.lis) }()
}

// Addr is the fake's host:port.
func (s *Server) Addr() string { return s.lis.Addr().String() }

// Calls reports how many times a method was called (e.g. "Search").
func (s *Server) Calls(method string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls[method]
}

// Rows reports the rows of a collection (-1 when it does not exist).
func (s *Server) Rows(name string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.colls[name]
	if !ok {
		return -1
	}
	return len(c.rows)
}

// Release marks a collection as released (as after an operator's release): reads fail until
// it is loaded again.
func (s *Server) Release(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c, ok := s.colls[name]; ok {
		c.loaded = false
	}
}

func (s *Server) enter(method string) {
	s.calls[method]++
}

func fail(format string, a ...any) *commonpb.Status {
	return merr.Status(merr.WrapErrParameterInvalidMsg(format, a...))
}

func (s *Server) get(name string) (*collection, *commonpb.Status) {
	c, ok := s.colls[name]
	if !ok {
		return nil, merr.Status(merr.WrapErrCollectionNotFound(name))
	}
	return c, nil
}

func (s *Server) getLoaded(name string) (*collection, *commonpb.Status) {
	c, st := s.get(name)
	if st != nil {
		return nil, st
	}
	if !c.loaded {
		return nil, merr.Status(merr.WrapErrCollectionNotLoaded(name))
	}
	return c, nil
}

func param(kvs []*commonpb.KeyValuePair, key string) (string, bool) {
	for _, kv := range kvs {
		if kv.GetKey() == key {
			return kv.GetValue(), true
		}
	}
	return "", false
}

// Connect implements the handshake the client makes in milvusclient.New.
func (s *Server) Connect(_ context.Context, _ *milvuspb.ConnectRequest) (*milvuspb.ConnectResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.enter("Connect")
	return &milvuspb.ConnectResponse{Status: merr.Success(), ServerInfo: &commonpb.ServerInfo{BuildTags: "milvustest"}, Identifier: 1}, nil
}

// CreateCollection checks the schema the milvus package declares.
func (s *Server) CreateCollection(_ context.Context, req *milvuspb.CreateCollectionRequest) (*commonpb.Status, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.enter("CreateCollection")
	name := req.GetCollectionName()
	if _, ok := s.colls[name]; ok {
		return fail("collection %s already exists", name), nil
	}
	var sch schemapb.CollectionSchema
	if err := proto.Unmarshal(req.GetSchema(), &sch); err != nil {
		return fail("schema: %v", err), nil
	}
	if sch.GetName() != name {
		return fail("schema name %q differs from %q", sch.GetName(), name), nil
	}
	var pk, partKey, vec bool
	dims := 0
	for i, f := range sch.GetFields() {
		f.FieldID = int64(100 + i)
		switch f.GetDataType() {
		case schemapb.DataType_VarChar:
			if _, ok := param(f.GetTypeParams(), "max_length"); !ok {
				return fail("varchar field %s without max_length", f.GetName()), nil
			}
			pk = pk || f.GetIsPrimaryKey()
			partKey = partKey || f.GetIsPartitionKey()
		case schemapb.DataType_JSON:
		case schemapb.DataType_FloatVector:
			d, _ := param(f.GetTypeParams(), "dim")
			n, err := strconv.Atoi(d)
			if err != nil || n <= 0 || vec {
				return fail("float vector field %s: dim %q", f.GetName(), d), nil
			}
			vec, dims = true, n
		default:
			return fail("field %s: type %s not supported by the fake", f.GetName(), f.GetDataType()), nil
		}
	}
	if !pk || !partKey || !vec {
		return fail("schema needs a varchar primary key, a partition key and a float vector"), nil
	}
	s.nextID++
	s.colls[name] = &collection{id: s.nextID, schema: &sch, dims: dims, rows: map[string]*stored{}}
	return merr.Success(), nil
}

func (s *Server) DescribeCollection(_ context.Context, req *milvuspb.DescribeCollectionRequest) (*milvuspb.DescribeCollectionResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.enter("DescribeCollection")
	c, st := s.get(req.GetCollectionName())
	if st != nil {
		return &milvuspb.DescribeCollectionResponse{Status: st}, nil
	}
	return &milvuspb.DescribeCollectionResponse{
		Status: merr.Success(), Schema: c.schema, CollectionID: c.id, CollectionName: c.schema.GetName(),
		ConsistencyLevel: commonpb.ConsistencyLevel_Strong,
	}, nil
}

func (s *Server) ShowCollections(_ context.Context, _ *milvuspb.ShowCollectionsRequest) (*milvuspb.ShowCollectionsResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.enter("ShowCollections")
	var names []string
	for n := range s.colls {
		names = append(names, n)
	}
	slices.Sort(names)
	return &milvuspb.ShowCollectionsResponse{Status: merr.Success(), CollectionNames: names}, nil
}

func (s *Server) DropCollection(_ context.Context, req *milvuspb.DropCollectionRequest) (*commonpb.Status, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.enter("DropCollection")
	delete(s.colls, req.GetCollectionName())
	return merr.Success(), nil
}

func (s *Server) CreateIndex(_ context.Context, req *milvuspb.CreateIndexRequest) (*commonpb.Status, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.enter("CreateIndex")
	c, st := s.get(req.GetCollectionName())
	if st != nil {
		return st, nil
	}
	if f := field(c.schema, req.GetFieldName()); f == nil || f.GetDataType() != schemapb.DataType_FloatVector {
		return fail("index on %q: not a float vector field", req.GetFieldName()), nil
	}
	metric, _ := param(req.GetExtraParams(), "metric_type")
	if metric != "COSINE" {
		return fail("the fake indexes with COSINE only, not %q", metric), nil
	}
	if c.indexed && c.metric != metric {
		return fail("at most one distinct index per field is supported"), nil
	}
	c.indexed, c.metric = true, metric
	return merr.Success(), nil
}

func (s *Server) DescribeIndex(_ context.Context, req *milvuspb.DescribeIndexRequest) (*milvuspb.DescribeIndexResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.enter("DescribeIndex")
	c, st := s.get(req.GetCollectionName())
	if st != nil {
		return &milvuspb.DescribeIndexResponse{Status: st}, nil
	}
	if !c.indexed {
		return &milvuspb.DescribeIndexResponse{Status: merr.Status(merr.WrapErrIndexNotFound(req.GetIndexName()))}, nil
	}
	return &milvuspb.DescribeIndexResponse{Status: merr.Success(), IndexDescriptions: []*milvuspb.IndexDescription{{
		IndexName: "vector", FieldName: "vector", State: commonpb.IndexState_Finished, // Milvus names an unnamed index after its field
		Params: []*commonpb.KeyValuePair{{Key: "metric_type", Value: c.metric}},
	}}}, nil
}

func (s *Server) LoadCollection(_ context.Context, req *milvuspb.LoadCollectionRequest) (*commonpb.Status, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.enter("LoadCollection")
	c, st := s.get(req.GetCollectionName())
	if st != nil {
		return st, nil
	}
	if !c.indexed {
		return merr.Status(merr.WrapErrIndexNotFound(req.GetCollectionName())), nil
	}
	c.loaded = true
	return merr.Success(), nil
}

func (s *Server) GetLoadingProgress(_ context.Context, req *milvuspb.GetLoadingProgressRequest) (*milvuspb.GetLoadingProgressResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.enter("GetLoadingProgress")
	c, st := s.get(req.GetCollectionName())
	if st != nil {
		return &milvuspb.GetLoadingProgressResponse{Status: st}, nil
	}
	if !c.loaded {
		return &milvuspb.GetLoadingProgressResponse{Status: merr.Status(merr.WrapErrCollectionNotLoaded(req.GetCollectionName()))}, nil
	}
	return &milvuspb.GetLoadingProgressResponse{Status: merr.Success(), Progress: 100, RefreshProgress: 100}, nil
}

func field(sch *schemapb.CollectionSchema, name string) *schemapb.FieldSchema {
	for _, f := range sch.GetFields() {
		if f.GetName() == name {
			return f
		}
	}
	return nil
}

func (s *Server) Upsert(_ context.Context, req *milvuspb.UpsertRequest) (*milvuspb.MutationResult, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.enter("Upsert")
	c, st := s.getLoaded(req.GetCollectionName())
	if st != nil {
		return &milvuspb.MutationResult{Status: st}, nil
	}
	n := int(req.GetNumRows())
	cols := map[string]column.Column{}
	for _, fd := range req.GetFieldsData() {
		f := field(c.schema, fd.GetFieldName())
		if f == nil {
			return &milvuspb.MutationResult{Status: fail("unknown field %q", fd.GetFieldName())}, nil
		}
		if fd.GetType() != f.GetDataType() {
			return &milvuspb.MutationResult{Status: fail("field %s: %s, want %s", f.GetName(), fd.GetType(), f.GetDataType())}, nil
		}
		col, err := column.FieldDataColumn(fd, 0, -1)
		if err != nil {
			return &milvuspb.MutationResult{Status: fail("field %s: %v", f.GetName(), err)}, nil
		}
		if col.Len() != n {
			return &milvuspb.MutationResult{Status: fail("field %s: %d rows, want %d", f.GetName(), col.Len(), n)}, nil
		}
		if f.GetDataType() == schemapb.DataType_FloatVector && fd.GetVectors().GetDim() != int64(c.dims) {
			return &milvuspb.MutationResult{Status: fail("the dimension of %s is %d, not %d", f.GetName(), c.dims, fd.GetVectors().GetDim())}, nil
		}
		cols[f.GetName()] = col
	}
	strs := func(name string) ([]string, error) {
		col, ok := cols[name].(*column.ColumnVarChar)
		if !ok {
			return nil, fmt.Errorf("field %s missing", name)
		}
		max, _ := param(field(c.schema, name).GetTypeParams(), "max_length")
		limit, _ := strconv.Atoi(max)
		for _, v := range col.Data() {
			if len(v) > limit {
				return nil, fmt.Errorf("field %s: %d bytes exceed max_length %d", name, len(v), limit)
			}
		}
		return col.Data(), nil
	}
	var out [4][]string
	for i, name := range []string{"pk", "store_id", "file_id", "chunk_id"} {
		v, err := strs(name)
		if err != nil {
			return &milvuspb.MutationResult{Status: fail("%v", err)}, nil
		}
		out[i] = v
	}
	js, ok := cols["attrs"].(*column.ColumnJSONBytes)
	vc, ok2 := cols["vector"].(*column.ColumnFloatVector)
	if !ok || !ok2 || len(cols) != len(c.schema.GetFields()) {
		return &milvuspb.MutationResult{Status: fail("every field is required")}, nil
	}
	rows := make([]*stored, n)
	for i := range n {
		attrs, err := decodeAttrs(js.Data()[i])
		if err != nil {
			return &milvuspb.MutationResult{Status: fail("%v", err)}, nil
		}
		rows[i] = &stored{row: row{pk: out[0][i], store: out[1][i], file: out[2][i], chunk: out[3][i], attrs: attrs},
			vec: slices.Clone([]float32(vc.Data()[i]))}
	}
	for _, r := range rows {
		c.rows[r.pk] = r
	}
	return &milvuspb.MutationResult{Status: merr.Success(), UpsertCnt: int64(n),
		IDs: &schemapb.IDs{IdField: &schemapb.IDs_StrId{StrId: &schemapb.StringArray{Data: out[0]}}}}, nil
}

func (s *Server) Delete(_ context.Context, req *milvuspb.DeleteRequest) (*milvuspb.MutationResult, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.enter("Delete")
	c, st := s.get(req.GetCollectionName())
	if st != nil {
		return &milvuspb.MutationResult{Status: st}, nil
	}
	p, err := parseExpr(req.GetExpr())
	if err != nil {
		return &milvuspb.MutationResult{Status: fail("expr %q: %v", req.GetExpr(), err)}, nil
	}
	n := 0
	for k, r := range c.rows {
		if p(&r.row) {
			delete(c.rows, k)
			n++
		}
	}
	return &milvuspb.MutationResult{Status: merr.Success(), DeleteCnt: int64(n)}, nil
}

func strong(level commonpb.ConsistencyLevel, useDefault bool) *commonpb.Status {
	if useDefault || level != commonpb.ConsistencyLevel_Strong {
		return fail("the fake serves Strong reads only (got %s, default %v)", level, useDefault)
	}
	return nil
}

// columns builds the output columns of rows.
func (c *collection) columns(names []string, rows []*stored) ([]*schemapb.FieldData, error) {
	var out []*schemapb.FieldData
	for _, name := range names {
		var col column.Column
		switch name {
		case "pk", "store_id", "file_id", "chunk_id":
			v := make([]string, len(rows))
			for i, r := range rows {
				v[i] = map[string]string{"pk": r.pk, "store_id": r.store, "file_id": r.file, "chunk_id": r.chunk}[name]
			}
			col = column.NewColumnVarChar(name, v)
		case "vector":
			v := make([][]float32, len(rows))
			for i, r := range rows {
				v[i] = r.vec
			}
			col = column.NewColumnFloatVector(name, c.dims, v)
		default:
			return nil, fmt.Errorf("output field %q not supported by the fake", name)
		}
		out = append(out, col.FieldData())
	}
	return out, nil
}

func (s *Server) Query(_ context.Context, req *milvuspb.QueryRequest) (*milvuspb.QueryResults, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.enter("Query")
	c, st := s.getLoaded(req.GetCollectionName())
	if st != nil {
		return &milvuspb.QueryResults{Status: st}, nil
	}
	if st := strong(req.GetConsistencyLevel(), req.GetUseDefaultConsistency()); st != nil {
		return &milvuspb.QueryResults{Status: st}, nil
	}
	ls, _ := param(req.GetQueryParams(), "limit")
	limit, err := strconv.Atoi(ls)
	if err != nil || limit < 1 || limit > 16384 {
		return &milvuspb.QueryResults{Status: fail("limit %q: the fake wants 1..16384", ls)}, nil
	}
	p, err := parseExpr(req.GetExpr())
	if err != nil {
		return &milvuspb.QueryResults{Status: fail("expr %q: %v", req.GetExpr(), err)}, nil
	}
	var rows []*stored
	for _, r := range c.rows {
		if len(rows) < limit && p(&r.row) {
			rows = append(rows, r)
		}
	}
	fds, err := c.columns(req.GetOutputFields(), rows)
	if err != nil {
		return &milvuspb.QueryResults{Status: fail("%v", err)}, nil
	}
	return &milvuspb.QueryResults{Status: merr.Success(), FieldsData: fds, CollectionName: req.GetCollectionName(),
		OutputFields: req.GetOutputFields()}, nil
}

func (s *Server) Search(_ context.Context, req *milvuspb.SearchRequest) (*milvuspb.SearchResults, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.enter("Search")
	c, st := s.getLoaded(req.GetCollectionName())
	if st != nil {
		return &milvuspb.SearchResults{Status: st}, nil
	}
	if st := strong(req.GetConsistencyLevel(), req.GetUseDefaultConsistency()); st != nil {
		return &milvuspb.SearchResults{Status: st}, nil
	}
	sp := req.GetSearchParams()
	if f, _ := param(sp, "anns_field"); f != "vector" {
		return &milvuspb.SearchResults{Status: fail("anns_field %q", f)}, nil
	}
	if m, _ := param(sp, "metric_type"); m != "" && m != c.metric {
		return &milvuspb.SearchResults{Status: fail("metric %q differs from the index's %q", m, c.metric)}, nil
	}
	ks, _ := param(sp, "topk")
	topk, err := strconv.Atoi(ks)
	if err != nil || topk < 1 || topk > 16384 {
		return &milvuspb.SearchResults{Status: fail("topk %q: 1..16384", ks)}, nil
	}
	var phg commonpb.PlaceholderGroup
	if err := proto.Unmarshal(req.GetPlaceholderGroup(), &phg); err != nil || len(phg.GetPlaceholders()) != 1 {
		return &milvuspb.SearchResults{Status: fail("placeholder group: %v", err)}, nil
	}
	ph := phg.GetPlaceholders()[0]
	if ph.GetType() != commonpb.PlaceholderType_FloatVector || len(ph.GetValues()) != 1 {
		return &milvuspb.SearchResults{Status: fail("one float vector query expected")}, nil
	}
	raw := ph.GetValues()[0]
	if len(raw) != 4*c.dims {
		return &milvuspb.SearchResults{Status: fail("query vector of %d bytes, dimension %d", len(raw), c.dims)}, nil
	}
	q := make([]float32, c.dims)
	for i := range q {
		q[i] = math.Float32frombits(binary.LittleEndian.Uint32(raw[4*i:]))
	}
	p, err := parseExpr(req.GetDsl())
	if err != nil {
		return &milvuspb.SearchResults{Status: fail("expr %q: %v", req.GetDsl(), err)}, nil
	}
	type scored struct {
		r *stored
		s float32
	}
	var all []scored
	for _, r := range c.rows {
		if p(&r.row) {
			all = append(all, scored{r, cosine(q, r.vec)})
		}
	}
	slices.SortFunc(all, func(a, b scored) int {
		if x := cmp.Compare(b.s, a.s); x != 0 {
			return x
		}
		return cmp.Compare(b.r.pk, a.r.pk)
	})
	all = all[:min(len(all), topk)]
	rows := make([]*stored, len(all))
	scores := make([]float32, len(all))
	pks := make([]string, len(all))
	for i, x := range all {
		rows[i], scores[i], pks[i] = x.r, x.s, x.r.pk
	}
	fds, err := c.columns(req.GetOutputFields(), rows)
	if err != nil {
		return &milvuspb.SearchResults{Status: fail("%v", err)}, nil
	}
	return &milvuspb.SearchResults{Status: merr.Success(), CollectionName: req.GetCollectionName(), Results: &schemapb.SearchResultData{
		NumQueries: 1, TopK: int64(topk), FieldsData: fds, Scores: scores, Topks: []int64{int64(len(all))},
		Ids:          &schemapb.IDs{IdField: &schemapb.IDs_StrId{StrId: &schemapb.StringArray{Data: pks}}},
		OutputFields: req.GetOutputFields(),
	}}, nil
}

func cosine(a, b []float32) float32 {
	var dot, na, nb float64
	for i := range a {
		dot += float64(a[i]) * float64(b[i])
		na += float64(a[i]) * float64(a[i])
		nb += float64(b[i]) * float64(b[i])
	}
	if na == 0 || nb == 0 {
		return 0
	}
	return float32(dot / math.Sqrt(na*nb))
}
