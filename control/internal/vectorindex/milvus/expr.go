package milvus

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/maas-platform/maas/control/internal/vectorindex"
)

// Field names of a chunk collection.
const (
	fieldPK      = "pk"
	fieldStore   = "store_id"
	fieldFile    = "file_id"
	fieldChunk   = "chunk_id"
	fieldAttrs   = "attrs"
	fieldVector  = "vector"
	maxIDLen     = 512
	maxPKLen     = 2*maxIDLen + 16
	attrsMaxJSON = 64 << 10 // Milvus's default JSON field limit is far larger; ours is a sanity bound
)

// attrKey is the name an attribute is stored under in the attrs JSON field: a type tag
// (s string, n number, b boolean) and the user's key in hexadecimal. The hexadecimal form
// means no user key ever reaches an expression as text (no quoting to get wrong, no
// injection through a key), and the type tag makes a comparison with a value of another
// type false by construction: a filter on a number reads n_<key>, which a string attribute
// never has, whatever Milvus does when it compares a JSON string with a number.
func attrKey(key string, v any) (string, bool) {
	var tag string
	switch v.(type) {
	case string:
		tag = "s_"
	case float64:
		tag = "n_"
	case bool:
		tag = "b_"
	default:
		return "", false
	}
	return tag + hex.EncodeToString([]byte(key)), true
}

// genKey holds SetAttributes's generation mark in the attrs field (no user key has this
// form: theirs are typed and hexadecimal).
const genKey = "gen"

// encodeAttrs is the attrs JSON of a chunk, with a generation mark unless gen is empty.
func encodeAttrs(attrs map[string]any, gen string) ([]byte, error) {
	out := make(map[string]any, len(attrs)+1)
	for k, v := range attrs {
		name, ok := attrKey(k, v)
		if !ok {
			return nil, vectorindex.ErrInvalid
		}
		out[name] = v
	}
	if gen != "" {
		out[genKey] = gen
	}
	b, err := json.Marshal(out)
	if err != nil {
		return nil, fmt.Errorf("encode attributes: %w", err)
	}
	if len(b) > attrsMaxJSON {
		return nil, fmt.Errorf("attributes of %d bytes: %w", len(b), vectorindex.ErrInvalid)
	}
	return b, nil
}

// quote renders s as a Milvus string literal. Milvus reads a double-quoted literal with Go's
// strconv.Unquote after its lexer accepted it; strconv.Quote writes only escapes that lexer
// accepts (\" \\ \n \t \a \b \f \r \v \xHH \uHHHH \UHHHHHHHH) and never a raw newline.
func quote(s string) string { return strconv.Quote(s) }

// number renders f as a Milvus floating literal ("2019.0", "0.5", "1e+20"), never an
// integer one: Milvus then compares the attribute as a double, which reads a JSON integer
// and a JSON fraction alike, and no literal can overflow its int64 parser.
func number(f float64) string {
	s := strconv.FormatFloat(f, 'g', -1, 64)
	if !strings.ContainsAny(s, ".eE") {
		s += ".0"
	}
	return s
}

// jsonText is s as it reads back from a JSON document: encoding/json writes each invalid
// UTF-8 byte of an attribute as U+FFFD, so a filter value must be compared in that form.
func jsonText(s string) string {
	if utf8.ValidString(s) {
		return s
	}
	b, _ := json.Marshal(s)
	var out string
	_ = json.Unmarshal(b, &out)
	return out
}

func literal(v any) string {
	switch x := v.(type) {
	case string:
		return quote(jsonText(x))
	case float64:
		return number(x)
	case bool:
		return strconv.FormatBool(x)
	}
	panic(fmt.Sprintf("milvus: literal of %T", v)) // ParseFilter admits no other type
}

// storeExpr selects the chunks of a store (the partition key, so Milvus searches only the
// store's partition).
func storeExpr(store string) string { return fieldStore + " == " + quote(store) }

func fileExpr(store, file string) string {
	return storeExpr(store) + " and " + fieldFile + " == " + quote(file)
}

// notGenExpr selects the rows not marked with generation gen (a missing mark included;
// "not exists" rather than != on a missing key, whose reading Milvus does not promise).
func notGenExpr(gen string) string {
	p := jsonPath(genKey)
	return "((not (exists " + p + ")) or (" + p + " != " + quote(gen) + "))"
}

// searchExpr is the boolean expression of a search: the store, and the filter if any.
func searchExpr(store string, f *vectorindex.Filter) (string, error) {
	if f == nil {
		return storeExpr(store), nil
	}
	fe, err := filterExpr(f)
	if err != nil {
		return "", err
	}
	return storeExpr(store) + " and (" + fe + ")", nil
}

var ops = map[string]string{"eq": "==", "ne": "!=", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}

// filterExpr translates a filter (validated by vectorindex.ParseFilter) into a Milvus
// boolean expression with the semantics of vectorindex.Filter.Match: a missing attribute
// or one of another type makes every comparison false, ne and nin included.
func filterExpr(f *vectorindex.Filter) (string, error) {
	switch f.Type {
	case "and", "or":
		if len(f.Filters) == 0 {
			return "", fmt.Errorf("filter: empty %s: %w", f.Type, vectorindex.ErrInvalid)
		}
		parts := make([]string, len(f.Filters))
		for i, c := range f.Filters {
			e, err := filterExpr(c)
			if err != nil {
				return "", err
			}
			parts[i] = "(" + e + ")"
		}
		return strings.Join(parts, " "+f.Type+" "), nil
	case "eq", "ne", "gt", "gte", "lt", "lte":
		name, ok := attrKey(f.Key, f.Value)
		if !ok {
			return "", fmt.Errorf("filter: value of %T: %w", f.Value, vectorindex.ErrInvalid)
		}
		if _, isBool := f.Value.(bool); isBool && f.Type != "eq" && f.Type != "ne" {
			return "", fmt.Errorf("filter: %s on a boolean: %w", f.Type, vectorindex.ErrInvalid)
		}
		path := jsonPath(name)
		cmp := path + " " + ops[f.Type] + " " + literal(f.Value)
		if f.Type == "ne" {
			// Milvus does not promise that != is false on a row without the key.
			return "(exists " + path + ") and (" + cmp + ")", nil
		}
		return cmp, nil
	case "in", "nin":
		list, ok := f.Value.([]any)
		if !ok || len(list) == 0 {
			return "", fmt.Errorf("filter: %s needs a non-empty list: %w", f.Type, vectorindex.ErrInvalid)
		}
		// One term per value type present in the list: an attribute has one type, so it
		// reads one of the typed keys at most.
		byKey := map[string][]string{}
		var order []string
		for _, v := range list {
			name, ok := attrKey(f.Key, v)
			if !ok {
				return "", fmt.Errorf("filter: value of %T: %w", v, vectorindex.ErrInvalid)
			}
			if _, seen := byKey[name]; !seen {
				order = append(order, name)
			}
			byKey[name] = append(byKey[name], literal(v))
		}
		terms := make([]string, len(order))
		for i, name := range order {
			path := jsonPath(name)
			set := "[" + strings.Join(byKey[name], ", ") + "]"
			if f.Type == "in" {
				terms[i] = path + " in " + set
			} else {
				terms[i] = "(exists " + path + ") and (" + path + " not in " + set + ")"
			}
		}
		if len(terms) == 1 {
			return terms[0], nil
		}
		return "(" + strings.Join(terms, ") or (") + ")", nil
	}
	return "", fmt.Errorf("filter: type %q: %w", f.Type, vectorindex.ErrInvalid)
}

// jsonPath names a key of the attrs field; name comes from attrKey ([snb]_ and hexadecimal)
// or is genKey.
func jsonPath(name string) string { return fieldAttrs + `["` + name + `"]` }

// pk is a chunk's primary key: unique per (store, chunk id) whatever characters the ids hold
// (the store id's length comes first, so no separator can be forged).
func pk(store, chunk string) string {
	return strconv.Itoa(len(store)) + ":" + store + "/" + chunk
}
