package knowledge

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/maas-platform/maas/control/internal/vectorindex"
	"github.com/maas-platform/maas/pkg/apierr"
	"github.com/maas-platform/maas/pkg/textcheck"
)

// rrfK is reciprocal rank fusion's constant (the usual 60).
const rrfK = 60

type hybridSearch struct {
	EmbeddingWeight *float64 `json:"embedding_weight"`
	TextWeight      *float64 `json:"text_weight"`
}

type rankingOptions struct {
	Ranker         *string       `json:"ranker"`
	ScoreThreshold *float64      `json:"score_threshold"`
	HybridSearch   *hybridSearch `json:"hybrid_search"`
}

type searchRequest struct {
	Query          json.RawMessage `json:"query"`
	MaxNumResults  *int            `json:"max_num_results"`
	Filters        json.RawMessage `json:"filters"`
	RankingOptions *rankingOptions `json:"ranking_options"`
	RewriteQuery   *bool           `json:"rewrite_query"` // accepted; queries are used as given
}

// SearchResult is one chunk found.
type SearchResult struct {
	FileID     string         `json:"file_id"`
	Filename   string         `json:"filename"`
	Score      float64        `json:"score"`
	Attributes map[string]any `json:"attributes"`
	Content    []ContentPart  `json:"content"`

	chunkID string
}

// SearchPage is OpenAI's search results page.
type SearchPage struct {
	Object      string          `json:"object"`
	SearchQuery []string        `json:"search_query"`
	Data        []*SearchResult `json:"data"`
	HasMore     bool            `json:"has_more"`
	NextPage    *string         `json:"next_page"`
}

// searchParams is a validated search.
type searchParams struct {
	query       string
	queries     []string
	k           int
	filter      *vectorindex.Filter
	threshold   float64
	wEmb, wText float64
}

func (r *searchRequest) validate() (*searchParams, error) {
	p := &searchParams{k: 10, wEmb: 1, wText: 1}
	raw := bytes.TrimSpace(r.Query)
	var one string
	var many []string
	switch {
	case len(raw) == 0 || string(raw) == "null":
		return nil, apierr.Param("query", "query is required")
	case json.Unmarshal(raw, &one) == nil:
		many = []string{one}
	case json.Unmarshal(raw, &many) == nil:
	default:
		return nil, apierr.Param("query", "query must be a string or an array of strings")
	}
	total := 0
	for _, q := range many {
		if strings.TrimSpace(q) == "" {
			return nil, apierr.Param("query", "query must not be empty")
		}
		if !textcheck.Valid(q) {
			return nil, apierr.Param("query", "query must be valid UTF-8 without NUL characters")
		}
		total += len(q)
	}
	if len(many) == 0 {
		return nil, apierr.Param("query", "query must not be empty")
	}
	if total > maxQueryLen {
		return nil, apierr.Param("query", "query must be at most %d bytes", maxQueryLen)
	}
	p.queries, p.query = many, strings.Join(many, "\n")
	if r.MaxNumResults != nil {
		if *r.MaxNumResults < 1 || *r.MaxNumResults > maxSearchRes {
			return nil, apierr.Param("max_num_results", "max_num_results must be from 1 to %d", maxSearchRes)
		}
		p.k = *r.MaxNumResults
	}
	f, err := vectorindex.ParseFilter(r.Filters)
	if err != nil {
		var fe *vectorindex.FilterError
		if errors.As(err, &fe) {
			param := "filters"
			if fe.Path != "" {
				param += "." + fe.Path
			}
			return nil, apierr.Param(param, "invalid filter: %s", fe.Message)
		}
		return nil, apierr.Param("filters", "invalid filter")
	}
	if err := checkFilterText(f, "filters"); err != nil {
		return nil, err
	}
	p.filter = f
	if ro := r.RankingOptions; ro != nil {
		if ro.Ranker != nil {
			switch *ro.Ranker {
			case "auto", "default-2024-11-15", "none":
			default:
				return nil, apierr.Param("ranking_options.ranker", "ranker must be \"auto\", \"default-2024-11-15\" or \"none\"")
			}
		}
		if ro.ScoreThreshold != nil {
			if *ro.ScoreThreshold < 0 || *ro.ScoreThreshold > 1 {
				return nil, apierr.Param("ranking_options.score_threshold", "score_threshold must be from 0 to 1")
			}
			p.threshold = *ro.ScoreThreshold
		}
		if h := ro.HybridSearch; h != nil {
			if h.EmbeddingWeight == nil || h.TextWeight == nil {
				return nil, apierr.Param("ranking_options.hybrid_search", "hybrid_search needs embedding_weight and text_weight")
			}
			if *h.EmbeddingWeight < 0 || *h.TextWeight < 0 || *h.EmbeddingWeight+*h.TextWeight == 0 {
				return nil, apierr.Param("ranking_options.hybrid_search", "weights must not be negative, and one must be positive")
			}
			p.wEmb, p.wText = *h.EmbeddingWeight, *h.TextWeight
		}
	}
	return p, nil
}

// Search finds the chunks of store storeID that best answer r.
func (s *Service) Search(ctx context.Context, c Caller, storeID string, r *searchRequest) (*SearchPage, error) {
	p, err := r.validate()
	if err != nil {
		return nil, err
	}
	v, err := s.loadStore(ctx, s.db, c, storeID, false)
	if err != nil {
		return nil, err
	}
	if v.ExpiresAt != nil && *v.ExpiresAt < s.now().Unix() {
		return nil, &apierr.Error{Kind: apierr.InvalidRequest, Param: "vector_store_id", Code: "vector_store_expired",
			Message: fmt.Sprintf("vector store %s has expired", storeID)}
	}
	results, err := s.search(ctx, c.identity(), v, p)
	if err != nil {
		return nil, err
	}
	// Activity moves the expiry; recorded at most once a minute, so searches do not all
	// write the store's row.
	if _, err := s.db.Exec(ctx, `UPDATE vector_stores SET last_active_at = now() WHERE id = $1 AND last_active_at < now() - interval '1 minute'`, storeID); err != nil {
		s.log.Warn("vector store activity not recorded", "vector_store", storeID, "err", err)
	}
	return &SearchPage{Object: "vector_store.search_results.page", SearchQuery: p.queries, Data: results}, nil
}

// candidates is how many chunks each ranking contributes to the fusion.
func candidates(k int) int { return min(200, max(50, 4*k)) }

func (s *Service) search(ctx context.Context, as Identity, v *VectorStore, p *searchParams) ([]*SearchResult, error) {
	n := candidates(p.k)
	var vecHits []vectorindex.Hit
	if p.wEmb > 0 {
		vecs, err := s.emb.Embed(ctx, as, v.EmbeddingModel, []string{p.query})
		if err != nil {
			return nil, embedAPIError(err)
		}
		vecHits, err = s.index.Search(ctx, vectorindex.Query{StoreID: v.ID, Vector: vecs[0], K: n, Filter: p.filter})
		if errors.Is(err, vectorindex.ErrDimensions) {
			return nil, &apierr.Error{Kind: apierr.Conflict, Message: fmt.Sprintf(
				"the embedding model %s now returns vectors of another length than the store's", v.EmbeddingModel), Err: err}
		}
		if err != nil {
			return nil, asAPI(err, "search vector store %s", v.ID)
		}
	}
	var textHits []string
	if p.wText > 0 {
		var err error
		if textHits, err = s.textSearch(ctx, v.ID, p.query, p.filter, n); err != nil {
			return nil, apierr.Wrap(err, "text search in %s", v.ID)
		}
	}
	type fused struct {
		id    string
		score float64
	}
	scores := map[string]float64{}
	if p.wText == 0 {
		for _, h := range vecHits {
			scores[h.ChunkID] = max(0, float64(h.Score))
		}
	} else {
		norm := (p.wEmb + p.wText) / float64(rrfK+1)
		for i, h := range vecHits {
			scores[h.ChunkID] += p.wEmb / float64(rrfK+i+1) / norm
		}
		for i, id := range textHits {
			scores[id] += p.wText / float64(rrfK+i+1) / norm
		}
	}
	order := make([]fused, 0, len(scores))
	for id, sc := range scores {
		if sc >= p.threshold {
			order = append(order, fused{id, sc})
		}
	}
	slices.SortFunc(order, func(a, b fused) int {
		if c := cmp.Compare(b.score, a.score); c != 0 {
			return c
		}
		return cmp.Compare(a.id, b.id)
	})
	// Fetch more than k: a candidate whose chunk is gone (detached meanwhile) is skipped.
	order = order[:min(len(order), p.k+10)]
	ids := make([]string, len(order))
	for i, o := range order {
		ids[i] = o.id
	}
	byID, err := s.chunks(ctx, v.ID, ids)
	if err != nil {
		return nil, apierr.Wrap(err, "search vector store %s", v.ID)
	}
	out := []*SearchResult{}
	for _, o := range order {
		r, ok := byID[o.id]
		if !ok {
			continue
		}
		r.Score = o.score
		out = append(out, r)
		if len(out) == p.k {
			break
		}
	}
	return out, nil
}

// textSearch ranks the store's chunks by full-text rank against query (any of its terms),
// the filter applied in the query.
func (s *Service) textSearch(ctx context.Context, storeID, query string, f *vectorindex.Filter, n int) ([]string, error) {
	args := []any{storeID, query, n}
	cond := "TRUE"
	if f != nil {
		cond = filterSQL(f, "f.attributes", &args)
	}
	rows, err := s.db.Query(ctx, `WITH q AS (SELECT nullif(replace(plainto_tsquery('english', $2)::text, ' & ', ' | '), '')::tsquery AS q)
		SELECT c.chunk_id FROM vector_store_chunks c
		JOIN vector_store_files f ON f.store_id = c.store_id AND f.file_id = c.file_id, q
		WHERE c.store_id = $1 AND q.q IS NOT NULL AND c.tsv @@ q.q AND `+cond+`
		ORDER BY ts_rank(c.tsv, q.q, 1) DESC, c.chunk_id LIMIT $3`, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		out = append(out, id)
	}
	return out, rows.Err()
}

func (s *Service) chunks(ctx context.Context, storeID string, ids []string) (map[string]*SearchResult, error) {
	rows, err := s.db.Query(ctx, `SELECT c.chunk_id, c.file_id, c.text, f.filename, f.attributes
		FROM vector_store_chunks c JOIN vector_store_files f ON f.store_id = c.store_id AND f.file_id = c.file_id
		WHERE c.store_id = $1 AND c.chunk_id = ANY($2)`, storeID, ids)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]*SearchResult{}
	for rows.Next() {
		var r SearchResult
		var text string
		var attrs []byte
		if err := rows.Scan(&r.chunkID, &r.FileID, &text, &r.Filename, &attrs); err != nil {
			return nil, err
		}
		r.Attributes = map[string]any{}
		_ = json.Unmarshal(attrs, &r.Attributes)
		r.Content = []ContentPart{{Type: "text", Text: text}}
		out[r.chunkID] = &r
	}
	return out, rows.Err()
}

// embedAPIError maps a failed query embedding to the caller's answer.
func embedAPIError(err error) error {
	var ee *EmbedError
	if !errors.As(err, &ee) {
		return apierr.Wrap(err, "embed the query")
	}
	switch {
	case ee.Status == 429 && ee.Code == "insufficient_quota":
		return &apierr.Error{Kind: apierr.QuotaExceeded, Message: "embedding the query: " + ee.Message, Err: err}
	case ee.Status == 429:
		return &apierr.Error{Kind: apierr.RateLimited, Message: "embedding the query: " + ee.Message, Err: err}
	case ee.Permanent():
		return &apierr.Error{Kind: apierr.InvalidRequest, Message: "embedding the query: " + ee.Message, Err: err}
	case ee.Status == 504:
		return &apierr.Error{Kind: apierr.UpstreamTimeout, Message: "embedding the query timed out", Err: err}
	}
	return &apierr.Error{Kind: apierr.BadGateway, Message: "embedding the query failed: " + ee.Message, Err: err}
}

// checkFilterText refuses a filter whose keys or string values PostgreSQL would refuse
// (NUL, invalid UTF-8): they match no attribute, and would fail the query.
func checkFilterText(f *vectorindex.Filter, path string) error {
	if f == nil {
		return nil
	}
	for i, sub := range f.Filters {
		if err := checkFilterText(sub, fmt.Sprintf("%s.filters[%d]", path, i)); err != nil {
			return err
		}
	}
	if f.Filters == nil && !textcheck.Valid(f.Key) {
		return apierr.Param(path+".key", "invalid filter: the key must be valid UTF-8 without NUL characters")
	}
	vals, ok := f.Value.([]any)
	if !ok {
		vals = []any{f.Value}
	}
	for _, v := range vals {
		if s, ok := v.(string); ok && !textcheck.Valid(s) {
			return apierr.Param(path+".value", "invalid filter: values must be valid UTF-8 without NUL characters")
		}
	}
	return nil
}
