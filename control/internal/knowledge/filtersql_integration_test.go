package knowledge

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/maas-platform/maas/control/internal/vectorindex"
	"github.com/maas-platform/maas/pkg/pgdb/pgtest"
)

// TestFilterSQLMatchesFilter checks that the full-text side's SQL translation of a filter
// keeps exactly the attribute sets the index side's Filter.Match keeps.
func TestFilterSQLMatchesFilter(t *testing.T) {
	pool, _ := pgtest.NewPool(t)
	attrSets := []map[string]any{
		{}, {"lang": "en"}, {"lang": "fr", "year": 2021.0}, {"lang": "En", "year": 2019.5, "public": true},
		{"lang": "en", "year": "2021", "public": false}, {"year": -3.0, "tag": "b"}, {"tag": "a", "public": true},
		{"lang": "é", "tag": "z"}, {"year": 1e9},
	}
	filters := []string{
		`{"type":"eq","key":"lang","value":"en"}`, `{"type":"ne","key":"lang","value":"en"}`,
		`{"type":"gt","key":"lang","value":"En"}`, `{"type":"lt","key":"lang","value":"f"}`,
		`{"type":"gte","key":"year","value":2019.5}`, `{"type":"lte","key":"year","value":2021}`,
		`{"type":"eq","key":"year","value":2021}`, `{"type":"ne","key":"year","value":2021}`,
		`{"type":"eq","key":"public","value":true}`, `{"type":"ne","key":"public","value":true}`,
		`{"type":"in","key":"lang","value":["fr","é"]}`, `{"type":"nin","key":"lang","value":["fr","é"]}`,
		`{"type":"in","key":"year","value":[2021,"2021"]}`, `{"type":"nin","key":"year","value":[2021,"x"]}`,
		`{"type":"and","filters":[{"type":"eq","key":"lang","value":"en"},{"type":"ne","key":"public","value":true}]}`,
		`{"type":"or","filters":[{"type":"eq","key":"tag","value":"a"},{"type":"lt","key":"year","value":0},{"type":"and","filters":[{"type":"eq","key":"lang","value":"fr"},{"type":"gt","key":"year","value":2000}]}]}`,
		`{"type":"eq","key":"missing","value":"x"}`, `{"type":"nin","key":"missing","value":["x"]}`,
	}
	ctx := context.Background()
	for _, fs := range filters {
		f, err := vectorindex.ParseFilter([]byte(fs))
		if err != nil {
			t.Fatalf("%s: %v", fs, err)
		}
		for _, a := range attrSets {
			raw, _ := json.Marshal(a)
			args := []any{string(raw)}
			cond := filterSQL(f, "f.attributes", &args)
			var got bool
			if err := pool.QueryRow(ctx, `SELECT `+cond+` FROM (SELECT $1::jsonb AS attributes) f`, args...).Scan(&got); err != nil {
				t.Fatalf("%s on %s: %v (%s)", fs, raw, err, cond)
			}
			if want := f.Match(a); got != want {
				t.Errorf("%s on %s: SQL says %v, Match says %v", fs, raw, got, want)
			}
		}
	}
}
