package milvus

import (
	"encoding/hex"
	"fmt"
	"math"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"

	"github.com/maas-platform/maas/control/internal/vectorindex"
	"github.com/maas-platform/maas/control/internal/vectorindex/milvus/milvustest"
)

func mustParse(t *testing.T, s string) *vectorindex.Filter {
	t.Helper()
	f, err := vectorindex.ParseFilter([]byte(s))
	if err != nil {
		t.Fatalf("parse %s: %v", s, err)
	}
	return f
}

func key(tag, k string) string { return `attrs["` + tag + "_" + hex.EncodeToString([]byte(k)) + `"]` }

func TestFilterExpr(t *testing.T) {
	lang, year, pub := key("s", "lang"), key("n", "year"), key("b", "public")
	cases := []struct{ filter, want string }{
		{`{"type":"eq","key":"lang","value":"en"}`, lang + ` == "en"`},
		{`{"type":"ne","key":"lang","value":"en"}`, `(exists ` + lang + `) and (` + lang + ` != "en")`},
		{`{"type":"gt","key":"year","value":2019}`, year + ` > 2019.0`},
		{`{"type":"gte","key":"year","value":2019.5}`, year + ` >= 2019.5`},
		{`{"type":"lt","key":"year","value":-3}`, year + ` < -3.0`},
		{`{"type":"lte","key":"year","value":1e20}`, year + ` <= 1e+20`},
		{`{"type":"eq","key":"public","value":true}`, pub + ` == true`},
		{`{"type":"ne","key":"public","value":false}`, `(exists ` + pub + `) and (` + pub + ` != false)`},
		{`{"type":"in","key":"lang","value":["fr","de"]}`, lang + ` in ["fr", "de"]`},
		{`{"type":"nin","key":"lang","value":["fr"]}`, `(exists ` + lang + `) and (` + lang + ` not in ["fr"])`},
		{`{"type":"in","key":"lang","value":["fr",1,true,"de"]}`,
			`(` + lang + ` in ["fr", "de"]) or (` + key("n", "lang") + ` in [1.0]) or (` + key("b", "lang") + ` in [true])`},
		{`{"type":"and","filters":[{"type":"eq","key":"lang","value":"en"},{"type":"or","filters":[{"type":"lt","key":"year","value":1},{"type":"eq","key":"public","value":true}]}]}`,
			`(` + lang + ` == "en") and ((` + year + ` < 1.0) or (` + pub + ` == true))`},
	}
	for _, c := range cases {
		got, err := filterExpr(mustParse(t, c.filter))
		if err != nil {
			t.Fatalf("%s: %v", c.filter, err)
		}
		if got != c.want {
			t.Errorf("%s:\n got %s\nwant %s", c.filter, got, c.want)
		}
	}
	got, _ := searchExpr(`vs_"1`, nil)
	if got != `store_id == "vs_\"1"` {
		t.Errorf("store expr: %s", got)
	}
	got, _ = searchExpr("vs_1", mustParse(t, `{"type":"eq","key":"lang","value":"en"}`))
	if got != `store_id == "vs_1" and (`+lang+` == "en")` {
		t.Errorf("search expr: %s", got)
	}
	if got := fileExpr("vs_1", "file\n"); got != `store_id == "vs_1" and file_id == "file\n"` {
		t.Errorf("file expr: %s", got)
	}
}

// Strings and keys that try to end the literal or the path are escaped or encoded: the
// expression keeps one comparison, which the fake (lexing as Milvus does) reads back to the
// original value.
func TestFilterExprInjection(t *testing.T) {
	for _, v := range []string{
		`" or store_id != "`, `\`, `\"`, `"]`, "\n", "\r\n", "\x00", "'", `\u0022`, "\U0001F600", `")) or ((true`,
		"a\"b\\c\x7f\u2028", strings.Repeat(`\"`, 50),
	} {
		f := &vectorindex.Filter{Type: "eq", Key: v, Value: v}
		e, err := filterExpr(f)
		if err != nil {
			t.Fatal(err)
		}
		if strings.ContainsAny(e, "\n\r") {
			t.Errorf("%q: raw line break in %s", v, e)
		}
		name, _ := attrKey(v, v)
		path := jsonPath(name)
		if !strings.HasPrefix(e, path+" == ") {
			t.Fatalf("%q: %s does not start with the encoded path", v, e)
		}
		lit := strings.TrimPrefix(e, path+" == ")
		if back, err := strconv.Unquote(lit); err != nil || back != v {
			t.Errorf("%q: literal %s reads back as %q (%v)", v, lit, back, err)
		}
		attrs, _ := encodeAttrs(map[string]any{v: v}, "")
		for _, doc := range []struct {
			attrs []byte
			want  bool
		}{{attrs, true}, {[]byte(`{}`), false}} {
			ok, err := milvustest.Eval(`store_id == "s" and (`+e+`)`, "s", "f", doc.attrs)
			if err != nil || ok != doc.want {
				t.Errorf("%q on %s: %v %v, want %v", v, doc.attrs, ok, err, doc.want)
			}
		}
		if ok, _ := milvustest.Eval(`store_id == "other" and (`+e+`)`, "s", "f", attrs); ok {
			t.Errorf("%q: matched another store", v)
		}
	}
}

// Invalid UTF-8 in a filter value is compared in the form a JSON attribute has.
func TestFilterExprInvalidUTF8(t *testing.T) {
	v := "a\xffb"
	e, _ := filterExpr(&vectorindex.Filter{Type: "eq", Key: "k", Value: v})
	attrs, _ := encodeAttrs(map[string]any{"k": v}, "")
	if ok, err := milvustest.Eval(e, "s", "f", attrs); err != nil || !ok {
		t.Fatalf("%s on %s: %v %v", e, attrs, ok, err)
	}
}

func TestNumberLiterals(t *testing.T) {
	for _, f := range []float64{0, -0.5, 3, 2019, 1e15, 1e20, -1e-7, 123.456, math.MaxFloat64, math.SmallestNonzeroFloat64, 1<<53 + 1} {
		s := number(f)
		back, err := strconv.ParseFloat(s, 64)
		if err != nil || back != f {
			t.Errorf("%v: %s reads back as %v (%v)", f, s, back, err)
		}
		if !strings.ContainsAny(s, ".eE") {
			t.Errorf("%v: %s is an integer literal", f, s)
		}
	}
}

// The translation means what vectorindex.Filter.Match means, on random filters and random
// attribute sets, under the fake's least favourable reading of missing keys.
func TestFilterExprAgreesWithMatch(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 11))
	keys := []string{"a", "b", `c"`}
	vals := []any{"x", "y", "", 1.0, 2.0, -1.5, true, false}
	var gen func(depth int) *vectorindex.Filter
	gen = func(depth int) *vectorindex.Filter {
		if depth < 3 && rng.IntN(3) == 0 {
			f := &vectorindex.Filter{Type: []string{"and", "or"}[rng.IntN(2)]}
			for range 1 + rng.IntN(3) {
				f.Filters = append(f.Filters, gen(depth+1))
			}
			return f
		}
		ops := []string{"eq", "ne", "gt", "gte", "lt", "lte", "in", "nin"}
		op := ops[rng.IntN(len(ops))]
		f := &vectorindex.Filter{Type: op, Key: keys[rng.IntN(len(keys))]}
		if op == "in" || op == "nin" {
			var list []any
			for range 1 + rng.IntN(3) {
				list = append(list, vals[rng.IntN(len(vals))])
			}
			f.Value = list
			return f
		}
		v := vals[rng.IntN(len(vals))]
		if _, isBool := v.(bool); isBool && op != "eq" && op != "ne" {
			v = "x"
		}
		f.Value = v
		return f
	}
	for i := range 3000 {
		f := gen(0)
		attrs := map[string]any{}
		for _, k := range keys {
			if rng.IntN(3) > 0 {
				attrs[k] = vals[rng.IntN(len(vals))]
			}
		}
		e, err := searchExpr("vs", f)
		if err != nil {
			t.Fatal(err)
		}
		js, _ := encodeAttrs(attrs, "")
		got, err := milvustest.Eval(e, "vs", "f", js)
		if err != nil {
			t.Fatalf("case %d: %s: %v", i, e, err)
		}
		if want := f.Match(attrs); got != want {
			t.Fatalf("case %d: filter %s on %v: expression says %v, Match says %v\n%s", i, show(f), attrs, got, want, e)
		}
	}
}

func show(f *vectorindex.Filter) string {
	if f.Type == "and" || f.Type == "or" {
		var parts []string
		for _, c := range f.Filters {
			parts = append(parts, show(c))
		}
		return f.Type + "(" + strings.Join(parts, ", ") + ")"
	}
	return fmt.Sprintf("%s %s %v", f.Key, f.Type, f.Value)
}

// The fake refuses what this package must never send, so the suite cannot pass on an
// expression Milvus would read differently.
func TestFakeRefusesOtherExpressions(t *testing.T) {
	for _, e := range []string{
		`attrs["lang"] == "en"`,                // a key that is not encoded
		`attrs["s_6c"] == 'en'`,                // single quotes
		"attrs[\"s_6c\"] == \"a\nb\"",          // raw line break
		`attrs["s_6c"] == "\q"`,                // escape Milvus's lexer does not know
		`attrs["s_6c"] == "\?"`,                // known to the lexer, refused by Unquote
		`store_id != "x"`,                      // scalar fields: == only
		`store_id == 1`,                        // a scalar field against a number
		`attrs["n_6c"] > 99999999999999999999`, // integer overflow
		`attrs["b_6c"] > true`,                 // ordering on a boolean
		`attrs["s_6c"] in ["a", 1]`,            // mixed list
		`attrs["s_6c"] == "a" && true`,         // operators this package does not write
		`(attrs["s_6c"] == "a"`,                // unbalanced
		`not attrs["s_6c"] == "a"`,
		`attrs ["s_6c"] == "a"`,                         // a path is one token
		`attrs[ "s_6c"] == "a"`,                         //
		`exists attrs["s_6c"] and attrs["s_6c"] != "a"`, // Milvus: exists (… and …)
		`attrs["s_6c"]["x"] == "a"`,                     // nested paths
		`attrs[0] == "a"`,                               // index paths
	} {
		if _, err := milvustest.Eval(e, "s", "f", []byte(`{}`)); err == nil {
			t.Errorf("fake accepted %s", e)
		}
	}
}
