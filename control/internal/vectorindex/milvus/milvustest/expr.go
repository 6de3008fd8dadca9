package milvustest

import (
	"cmp"
	"encoding/json"
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// The expression language the fake accepts is the part of Milvus's boolean expressions that
// the milvus package generates, and it is stricter than Milvus wherever that proves the
// translation:
//
//	expr    = and { "or" and }
//	and     = unary { "and" unary }
//	unary   = "(" expr ")" | "not" "(" expr ")" | "exists" path | operand op literal
//	        | operand [ "not" ] "in" "[" literal { "," literal } "]"
//	operand = "pk" | "store_id" | "file_id" | "chunk_id" | path
//	path    = "attrs[" string "]"         one token (no blanks); the key is [snb]_ and hexadecimal, or gen
//	op      = "==" | "!=" | ">" | ">=" | "<" | "<="
//	literal = string | number | "true" | "false"
//
// Strings are lexed as Milvus's grammar does (double quotes; escapes \' \" \? \\ \a \b \f
// \n \r \t \v, octal, \x, \u, \U; no raw line breaks) and then decoded with strconv.Unquote
// as Milvus's parser does, so a literal Milvus would reject is rejected here; a JSON path is
// one token, as in Milvus's lexer. "exists" takes the rest of the expression in Milvus's
// grammar (it has the lowest precedence), so it is accepted here only before a path, which
// the generator makes sure of by parenthesizing it. Scalar fields
// compare only with == and a string; a list must hold one type; booleans only with == and
// !=. Evaluation follows Milvus's JSON rules where they are safe to rely on (a value of
// another type compares false) and the least favourable reading where they are not: a
// missing key makes == < <= > >= and in false, but != and not in TRUE, so a translation
// that forgets its "exists" guard fails the conformance suite here.

// row is what an expression reads.
type row struct {
	pk, store, file, chunk string
	attrs                  map[string]any
}

type pred func(r *row) bool

var (
	keyRe    = regexp.MustCompile(`^([snb]_([0-9a-f]{2})+|gen)$`)
	numberRe = regexp.MustCompile(`^-?[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?`)
	identRe  = regexp.MustCompile(`^[a-z_]+`)
)

type token struct {
	kind string // ident, string, number, op, punct, eof
	text string // raw text
	val  any    // decoded literal (string, float64)
}

func lex(s string) ([]token, error) {
	var out []token
	i := 0
	for i < len(s) {
		c := s[i]
		switch {
		case c == ' ':
			i++
		case c == '(' || c == ')' || c == '[' || c == ']' || c == ',':
			out = append(out, token{kind: "punct", text: string(c)})
			i++
		case c == '=' || c == '!' || c == '<' || c == '>':
			op := string(c)
			if i+1 < len(s) && s[i+1] == '=' {
				op += "="
			}
			if op == "=" || op == "!" {
				return nil, fmt.Errorf("unknown operator %q at %d", op, i)
			}
			out = append(out, token{kind: "op", text: op})
			i += len(op)
		case c == '"':
			j, err := scanString(s, i)
			if err != nil {
				return nil, err
			}
			raw := s[i:j]
			v, err := strconv.Unquote(raw)
			if err != nil {
				return nil, fmt.Errorf("string literal %s: %v", raw, err)
			}
			out = append(out, token{kind: "string", text: raw, val: v})
			i = j
		case c == '-' || (c >= '0' && c <= '9'):
			m := numberRe.FindString(s[i:])
			if m == "" {
				return nil, fmt.Errorf("bad number at %d", i)
			}
			f, err := strconv.ParseFloat(m, 64)
			if err != nil {
				return nil, fmt.Errorf("number %s: %v", m, err)
			}
			if !strings.ContainsAny(m, ".eE") {
				// Milvus parses an integer literal as int64.
				if _, err := strconv.ParseInt(m, 10, 64); err != nil {
					return nil, fmt.Errorf("integer %s out of int64 range", m)
				}
			}
			out = append(out, token{kind: "number", text: m, val: f})
			i += len(m)
		case c >= 'a' && c <= 'z':
			m := identRe.FindString(s[i:])
			j := i + len(m)
			if j < len(s) && s[j] == '[' {
				// A JSON path is one token in Milvus's lexer: no blanks inside.
				var keys []string
				for j < len(s) && s[j] == '[' {
					if j+1 >= len(s) || s[j+1] != '"' {
						return nil, fmt.Errorf("json path %s: the fake wants a double-quoted key", m)
					}
					end, err := scanString(s, j+1)
					if err != nil {
						return nil, err
					}
					k, err := strconv.Unquote(s[j+1 : end])
					if err != nil {
						return nil, fmt.Errorf("json key %s: %v", s[j+1:end], err)
					}
					if end >= len(s) || s[end] != ']' {
						return nil, fmt.Errorf("json path %s: no closing bracket", m)
					}
					keys = append(keys, k)
					j = end + 1
				}
				out = append(out, token{kind: "json", text: m, val: keys})
				i = j
				break
			}
			out = append(out, token{kind: "ident", text: m})
			i = j
		default:
			return nil, fmt.Errorf("unexpected character %q at %d", c, i)
		}
	}
	return append(out, token{kind: "eof"}), nil
}

// scanString returns the end (exclusive) of the double-quoted literal starting at i,
// accepting only what Milvus's lexer accepts.
func scanString(s string, i int) (int, error) {
	hex := func(j, n int) bool {
		if j+n > len(s) {
			return false
		}
		for k := j; k < j+n; k++ {
			if !strings.ContainsRune("0123456789abcdefABCDEF", rune(s[k])) {
				return false
			}
		}
		return true
	}
	j := i + 1
	for j < len(s) {
		switch s[j] {
		case '"':
			return j + 1, nil
		case '\r', '\n':
			return 0, fmt.Errorf("raw line break in a string literal at %d", j)
		case '\\':
			if j+1 >= len(s) {
				return 0, fmt.Errorf("unterminated escape at %d", j)
			}
			e := s[j+1]
			switch {
			case strings.IndexByte(`'"?\abfnrtv`, e) >= 0:
				j += 2
			case e >= '0' && e <= '7':
				j += 2
				for n := 0; n < 2 && j < len(s) && s[j] >= '0' && s[j] <= '7'; n++ {
					j++
				}
			case e == 'x':
				j += 2
				if !hex(j, 1) {
					return 0, fmt.Errorf("bad \\x escape at %d", j)
				}
				for j < len(s) && hex(j, 1) {
					j++
				}
			case e == 'u' && hex(j+2, 4):
				j += 6
			case e == 'U' && hex(j+2, 8):
				j += 10
			default:
				return 0, fmt.Errorf("bad escape \\%c at %d", e, j)
			}
		default:
			j++
		}
	}
	return 0, fmt.Errorf("unterminated string literal at %d", i)
}

type parser struct {
	toks []token
	pos  int
}

func (p *parser) peek() token { return p.toks[p.pos] }
func (p *parser) next() token { t := p.toks[p.pos]; p.pos++; return t }

func (p *parser) accept(kind, text string) bool {
	if t := p.peek(); t.kind == kind && t.text == text {
		p.pos++
		return true
	}
	return false
}

func (p *parser) expect(kind, text string) error {
	if !p.accept(kind, text) {
		return fmt.Errorf("expected %q, found %q", text, p.peek().text)
	}
	return nil
}

// parseExpr compiles an expression of the language above.
func parseExpr(s string) (pred, error) {
	toks, err := lex(s)
	if err != nil {
		return nil, err
	}
	p := &parser{toks: toks}
	e, err := p.or(0)
	if err != nil {
		return nil, err
	}
	if p.peek().kind != "eof" {
		return nil, fmt.Errorf("trailing %q", p.peek().text)
	}
	return e, nil
}

const maxDepth = 64

func (p *parser) or(depth int) (pred, error) {
	left, err := p.and(depth)
	if err != nil {
		return nil, err
	}
	for p.accept("ident", "or") {
		right, err := p.and(depth)
		if err != nil {
			return nil, err
		}
		l := left
		left = func(r *row) bool { return l(r) || right(r) }
	}
	return left, nil
}

func (p *parser) and(depth int) (pred, error) {
	left, err := p.unary(depth)
	if err != nil {
		return nil, err
	}
	for p.accept("ident", "and") {
		right, err := p.unary(depth)
		if err != nil {
			return nil, err
		}
		l := left
		left = func(r *row) bool { return l(r) && right(r) }
	}
	return left, nil
}

func (p *parser) unary(depth int) (pred, error) {
	if depth > maxDepth {
		return nil, fmt.Errorf("nested too deep")
	}
	if p.accept("punct", "(") {
		e, err := p.or(depth + 1)
		if err != nil {
			return nil, err
		}
		return e, p.expect("punct", ")")
	}
	if p.accept("ident", "not") {
		// Only "not (…)": a bare not binds tighter than a comparison in Milvus.
		if p.peek().text != "(" {
			return nil, fmt.Errorf("not must be followed by a parenthesis")
		}
		e, err := p.unary(depth + 1)
		if err != nil {
			return nil, err
		}
		return func(r *row) bool { return !e(r) }, nil
	}
	if p.accept("ident", "exists") {
		key, err := p.path()
		if err != nil {
			return nil, err
		}
		if n := p.peek(); n.kind != "eof" && n.text != ")" {
			return nil, fmt.Errorf("exists followed by %q: Milvus would read the rest as its operand", n.text)
		}
		return func(r *row) bool { _, ok := r.attrs[key]; return ok }, nil
	}
	t := p.peek()
	if t.kind == "json" {
		key, err := p.path()
		if err != nil {
			return nil, err
		}
		return p.jsonCompare(key)
	}
	p.pos++
	if t.kind != "ident" {
		return nil, fmt.Errorf("expected a field, found %q", t.text)
	}
	switch t.text {
	case "pk", "store_id", "file_id", "chunk_id":
		return p.scalar(t.text)
	}
	return nil, fmt.Errorf("unknown field %q", t.text)
}

func (p *parser) path() (string, error) {
	t := p.next()
	if t.kind != "json" || t.text != "attrs" {
		return "", fmt.Errorf("expected a path in attrs, found %q", t.text)
	}
	keys := t.val.([]string)
	if len(keys) != 1 {
		return "", fmt.Errorf("json path of %d keys: attributes are flat", len(keys))
	}
	if !keyRe.MatchString(keys[0]) {
		return "", fmt.Errorf("json key %q is not an encoded attribute key", keys[0])
	}
	return keys[0], nil
}

func (p *parser) scalar(field string) (pred, error) {
	if err := p.expect("op", "=="); err != nil {
		return nil, fmt.Errorf("%s: %v", field, err)
	}
	t := p.next()
	if t.kind != "string" {
		return nil, fmt.Errorf("%s compares with a string, found %q", field, t.text)
	}
	want := t.val.(string)
	get := map[string]func(*row) string{
		"pk":       func(r *row) string { return r.pk },
		"store_id": func(r *row) string { return r.store },
		"file_id":  func(r *row) string { return r.file },
		"chunk_id": func(r *row) string { return r.chunk },
	}[field]
	return func(r *row) bool { return get(r) == want }, nil
}

func (p *parser) literal() (any, error) {
	t := p.next()
	switch {
	case t.kind == "string" || t.kind == "number":
		return t.val, nil
	case t.kind == "ident" && t.text == "true":
		return true, nil
	case t.kind == "ident" && t.text == "false":
		return false, nil
	}
	return nil, fmt.Errorf("expected a literal, found %q", t.text)
}

func (p *parser) jsonCompare(key string) (pred, error) {
	not := p.accept("ident", "not")
	if p.accept("ident", "in") {
		if err := p.expect("punct", "["); err != nil {
			return nil, err
		}
		var list []any
		for {
			v, err := p.literal()
			if err != nil {
				return nil, err
			}
			if len(list) > 0 && fmt.Sprintf("%T", v) != fmt.Sprintf("%T", list[0]) {
				return nil, fmt.Errorf("mixed types in a list")
			}
			list = append(list, v)
			if p.accept("punct", "]") {
				break
			}
			if err := p.expect("punct", ","); err != nil {
				return nil, err
			}
		}
		return func(r *row) bool {
			a, ok := r.attrs[key]
			if !ok {
				return not // least favourable: "not in" is true on a missing key
			}
			found := false
			for _, v := range list {
				if c, ok := compare(a, v); ok && c == 0 {
					found = true
				}
			}
			if not {
				_, same := compare(a, list[0])
				return same && !found
			}
			return found
		}, nil
	}
	if not {
		return nil, fmt.Errorf("expected in after not")
	}
	t := p.next()
	if t.kind != "op" {
		return nil, fmt.Errorf("expected an operator, found %q", t.text)
	}
	op := t.text
	v, err := p.literal()
	if err != nil {
		return nil, err
	}
	if _, isBool := v.(bool); isBool && op != "==" && op != "!=" {
		return nil, fmt.Errorf("%s on a boolean", op)
	}
	return func(r *row) bool {
		a, ok := r.attrs[key]
		if !ok {
			return op == "!=" // least favourable reading of a missing key
		}
		c, ok := compare(a, v)
		if !ok {
			return false
		}
		switch op {
		case "==":
			return c == 0
		case "!=":
			return c != 0
		case ">":
			return c > 0
		case ">=":
			return c >= 0
		case "<":
			return c < 0
		}
		return c <= 0
	}, nil
}

func compare(a, b any) (int, bool) {
	switch x := a.(type) {
	case string:
		y, ok := b.(string)
		return cmp.Compare(x, y), ok
	case float64:
		y, ok := b.(float64)
		return cmp.Compare(x, y), ok
	case bool:
		y, ok := b.(bool)
		if x == y {
			return 0, ok
		}
		return 1, ok
	}
	return 0, false
}

// decodeAttrs reads a JSON object of scalars (numbers as float64).
func decodeAttrs(b []byte) (map[string]any, error) {
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("json field: %v", err)
	}
	for k, v := range m {
		switch v.(type) {
		case string, float64, bool:
		default:
			return nil, fmt.Errorf("json field: key %q holds %T", k, v)
		}
	}
	return m, nil
}

// Eval evaluates expr, in the fake's language and semantics, on one row with the given
// store and file ids and attrs JSON: what Delete, Query and Search would decide for it.
func Eval(expr, store, file string, attrs []byte) (bool, error) {
	p, err := parseExpr(expr)
	if err != nil {
		return false, err
	}
	m, err := decodeAttrs(attrs)
	if err != nil {
		return false, err
	}
	return p(&row{store: store, file: file, attrs: m}), nil
}
