package apidocs

import (
	"encoding/json"
	"fmt"
	"regexp"
	"sort"
	"strings"
)

// Route is one documented or registered operation: an HTTP method and a path pattern.
type Route struct {
	Method string
	Path   string
}

func (r Route) String() string { return r.Method + " " + r.Path }

var methods = map[string]bool{"get": true, "put": true, "post": true, "delete": true, "options": true, "head": true, "patch": true, "trace": true}

// Documented lists the operations of the embedded document, sorted.
func Documented() ([]Route, error) {
	var doc struct {
		Paths map[string]map[string]json.RawMessage `json:"paths"`
	}
	if err := json.Unmarshal(document, &doc); err != nil {
		return nil, fmt.Errorf("decode openapi.json: %w", err)
	}
	var out []Route
	for p, item := range doc.Paths {
		for m := range item {
			if methods[m] {
				out = append(out, Route{Method: strings.ToUpper(m), Path: p})
			}
		}
	}
	sortRoutes(out)
	return out, nil
}

var param = regexp.MustCompile(`\{[^}]*\}`)

// normalize turns both OpenAPI ("{id}") and fasthttp/router ("{id}", "{name:*}",
// "{id?}") path parameters into "{}", so that patterns compare by shape.
func normalize(p string) string { return param.ReplaceAllString(p, "{}") }

// Compare checks registered routes (the shape of router.Router.List(): method → paths)
// against the document. Routes for which skip returns true are left out (e.g. the
// gateway's catch-all forwards to control, checked against control's own routes); skip may
// be nil. undocumented are registered but not documented; missing are documented but not
// registered.
func Compare(registered map[string][]string, skip func(Route) bool) (undocumented, missing []Route, err error) {
	documented, err := Documented()
	if err != nil {
		return nil, nil, err
	}
	return compare(documented, registered, skip)
}

func compare(documented []Route, registered map[string][]string, skip func(Route) bool) (undocumented, missing []Route, err error) {
	key := func(r Route) Route { return Route{strings.ToUpper(r.Method), normalize(r.Path)} }
	doc := map[Route]bool{}
	for _, r := range documented {
		if skip == nil || !skip(r) {
			doc[key(r)] = true
		}
	}
	reg := map[Route]bool{}
	for m, paths := range registered {
		for _, p := range paths {
			r := Route{m, p}
			if skip != nil && skip(r) {
				continue
			}
			reg[key(r)] = true
			if !doc[key(r)] {
				undocumented = append(undocumented, r)
			}
		}
	}
	for _, r := range documented {
		if (skip == nil || !skip(r)) && !reg[key(r)] {
			missing = append(missing, r)
		}
	}
	sortRoutes(undocumented)
	sortRoutes(missing)
	return undocumented, missing, nil
}

func sortRoutes(rs []Route) {
	sort.Slice(rs, func(i, j int) bool {
		if rs[i].Path != rs[j].Path {
			return rs[i].Path < rs[j].Path
		}
		return rs[i].Method < rs[j].Method
	})
}
