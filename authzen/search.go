package authzen

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"slices"

	"github.com/open-policy-agent/opa/v1/ast"

	"github.com/gatehouse-dev/gatehouse/authz"
)

// search answers the three searches: the rule (search_subjects,
// search_resources, search_actions) is a set of entities; they are sorted
// by their JSON text and paged. A page token is the last entity of the
// previous page (base64url of its JSON text), so paging is stable whatever
// changes between pages: the next page starts after it.
func (s *Server) search(ctx context.Context, r *http.Request, req map[string]any) (any, *apiError) {
	rule := s.searches[r.URL.Path]
	if err := checkSearch(r.URL.Path, req); err != nil {
		return nil, err
	}
	limit, after, aerr := s.page(req)
	if aerr != nil {
		return nil, aerr
	}
	in, aerr := input(req)
	if aerr != nil {
		return nil, aerr
	}
	sess, aerr := s.session(ctx, r)
	if aerr != nil {
		return nil, aerr
	}
	defer sess.Close()
	id := authz.NewDecisionID()
	v, cache, err := sess.Eval(rule, in)
	if err != nil {
		aerr := engineError(err)
		s.observe(sess, rule, in, id, "", nil, verdict{}, cache, aerr)
		return nil, aerr
	}
	texts, err := entityTexts(v)
	if err != nil {
		return nil, &apiError{status: http.StatusInternalServerError, code: "internal", message: fmt.Sprintf("%v: %v", rule, err)}
	}
	slices.Sort(texts)
	texts = slices.Compact(texts)
	total := len(texts)
	start := 0
	if after != "" {
		start, _ = slices.BinarySearch(texts, after)
		if start < len(texts) && texts[start] == after {
			start++
		}
	}
	end := min(start+limit, len(texts))
	results := make([]json.RawMessage, 0, end-start)
	for _, t := range texts[start:end] {
		results = append(results, json.RawMessage(t))
	}
	next := ""
	if end < len(texts) && end > start {
		next = base64.RawURLEncoding.EncodeToString([]byte(texts[end-1]))
	}
	// the record's result is the page answered, not the whole set
	s.observe(sess, rule, in, id, "", searchResult(results, total), verdict{Decision: len(results) > 0}, cache, nil)
	return map[string]any{
		"results": results,
		"page":    map[string]any{"next_token": next, "count": len(results), "total": total},
		"context": map[string]any{"gatehouse": stamp(sess, id)},
	}, nil
}

// checkSearch validates a search request: the searched entity needs its
// type only; the others are complete.
func checkSearch(path string, req map[string]any) *apiError {
	var err *apiError
	switch path {
	case PathSearchSubject:
		if err = checkEntity(subjectShape, req["subject"], []string{"type"}); err == nil {
			if err = checkEntity(actionShape, req["action"], actionShape.fields); err == nil {
				err = checkEntity(resourceShape, req["resource"], resourceShape.fields)
			}
		}
	case PathSearchResource:
		if err = checkEntity(subjectShape, req["subject"], subjectShape.fields); err == nil {
			if err = checkEntity(actionShape, req["action"], actionShape.fields); err == nil {
				err = checkEntity(resourceShape, req["resource"], []string{"type"})
			}
		}
	case PathSearchAction:
		if err = checkEntity(subjectShape, req["subject"], subjectShape.fields); err == nil {
			if err = checkEntity(resourceShape, req["resource"], resourceShape.fields); err == nil {
				if a, present := req["action"]; present {
					err = checkEntity(actionShape, a, nil)
				}
			}
		}
	}
	if err != nil {
		return err
	}
	c, present := req["context"]
	return checkContext(c, present)
}

// page reads page.limit and page.token.
func (s *Server) page(req map[string]any) (limit int, after string, _ *apiError) {
	limit = s.cfg.MaxPageSize
	raw, present := req["page"]
	if !present || raw == nil {
		return limit, "", nil
	}
	p, ok := raw.(map[string]any)
	if !ok {
		return 0, "", badRequest("page must be an object")
	}
	if l, present := p["limit"]; present {
		n, ok := l.(json.Number)
		f, err := n.Float64()
		if !ok || err != nil || f != math.Trunc(f) || f < 0 {
			return 0, "", badRequest("page.limit must be a non-negative integer")
		}
		if f > 0 && f < float64(limit) {
			limit = int(f)
		}
	}
	if t, present := p["token"]; present {
		tok, ok := t.(string)
		if !ok {
			return 0, "", badRequest("page.token must be a string")
		}
		if tok != "" {
			b, err := base64.RawURLEncoding.DecodeString(tok)
			if err != nil || !json.Valid(b) {
				return 0, "", badRequest("page.token is not a token this server issued")
			}
			after = string(b)
		}
	}
	return limit, after, nil
}

// entityTexts renders the entities of a search rule's value (a set or an
// array of objects; undefined: none) as canonical JSON text.
func entityTexts(v ast.Value) ([]string, error) {
	var terms []*ast.Term
	switch x := v.(type) {
	case nil:
		return nil, nil
	case ast.Set:
		terms = x.Slice()
	case *ast.Array:
		x.Foreach(func(t *ast.Term) { terms = append(terms, t) })
	default:
		return nil, fmt.Errorf("a search rule is a set of entities, got %s", ast.ValueName(v))
	}
	out := make([]string, 0, len(terms))
	for _, t := range terms {
		if _, ok := t.Value.(ast.Object); !ok {
			return nil, fmt.Errorf("a search result is an object, got %s", ast.ValueName(t.Value))
		}
		j, err := ast.JSON(t.Value)
		if err != nil {
			return nil, err
		}
		b, err := json.Marshal(j) // map keys sorted: canonical
		if err != nil {
			return nil, err
		}
		out = append(out, string(b))
	}
	return out, nil
}

// searchResult is a search's record result: the page answered.
func searchResult(results []json.RawMessage, total int) map[string]any {
	rs := make([]any, len(results))
	for i, r := range results {
		rs[i] = r
	}
	return map[string]any{"results": rs, "total": total}
}
