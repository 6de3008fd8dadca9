package knowledge

import (
	"fmt"
	"strings"

	"github.com/maas-platform/maas/control/internal/vectorindex"
)

// filterSQL translates f into a condition on the attributes column attrs (a jsonb), with
// vectorindex's semantics: a comparison on a missing key or of another type is false;
// strings compare bytewise (COLLATE "C"). Values become parameters appended to args.
func filterSQL(f *vectorindex.Filter, attrs string, args *[]any) string {
	param := func(v any) string {
		*args = append(*args, v)
		return fmt.Sprintf("$%d", len(*args))
	}
	switch f.Type {
	case "and", "or":
		parts := make([]string, len(f.Filters))
		for i, c := range f.Filters {
			parts[i] = filterSQL(c, attrs, args)
		}
		return "(" + strings.Join(parts, " "+strings.ToUpper(f.Type)+" ") + ")"
	}
	key := param(f.Key)
	field := fmt.Sprintf("(%s->%s::text)", attrs, key)
	text := fmt.Sprintf("(%s->>%s::text)", attrs, key)
	cmp := func(op string, v any) string {
		switch x := v.(type) {
		case string:
			return fmt.Sprintf(`(CASE WHEN jsonb_typeof%s = 'string' THEN %s COLLATE "C" %s %s::text COLLATE "C" ELSE FALSE END)`, field, text, op, param(x))
		case float64:
			return fmt.Sprintf(`(CASE WHEN jsonb_typeof%s = 'number' THEN %s::float8 %s %s::float8 ELSE FALSE END)`, field, text, op, param(x))
		case bool:
			return fmt.Sprintf(`(CASE WHEN jsonb_typeof%s = 'boolean' THEN %s::boolean %s %s::boolean ELSE FALSE END)`, field, text, op, param(x))
		}
		return "FALSE"
	}
	ops := map[string]string{"eq": "=", "ne": "<>", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
	if op, ok := ops[f.Type]; ok {
		return cmp(op, f.Value)
	}
	list, _ := f.Value.([]any)
	var eqs, types []string
	seen := map[string]bool{}
	for _, v := range list {
		eqs = append(eqs, cmp("=", v))
		var t string
		switch v.(type) {
		case string:
			t = "string"
		case float64:
			t = "number"
		case bool:
			t = "boolean"
		}
		if !seen[t] {
			seen[t] = true
			types = append(types, fmt.Sprintf("jsonb_typeof%s = '%s'", field, t))
		}
	}
	anyEq := "(" + strings.Join(eqs, " OR ") + ")"
	if f.Type == "in" {
		return anyEq
	}
	// jsonb_typeof of a missing key is NULL: coalesce keeps the condition a boolean.
	return "coalesce((" + strings.Join(types, " OR ") + ") AND NOT " + anyEq + ", FALSE)"
}
