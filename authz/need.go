package authz

import (
	"github.com/open-policy-agent/opa/v1/ast"
)

// Need says which parts of the input document a policy set can read: the
// input paths its rules reference (see the decision cache's plan). A
// transport adapter may build only those parts; anything else cannot
// influence the decision. A nil *Need needs nothing; All needs the whole
// subtree.
type Need struct {
	All      bool
	children map[string]*Need
}

// NeedAll needs the whole input.
var NeedAll = &Need{All: true}

// Child returns what is needed below key k (nil: nothing).
func (n *Need) Child(k string) *Need {
	switch {
	case n == nil:
		return nil
	case n.All:
		return NeedAll
	}
	return n.children[k]
}

// Keys lists the keys needed below n (nil when n is All or nil).
func (n *Need) Keys() []string {
	if n == nil || n.All {
		return nil
	}
	out := make([]string, 0, len(n.children))
	for k := range n.children {
		out = append(out, k)
	}
	return out
}

// needOf builds the need tree of input paths (each starting at input).
// Array indexes are treated as needing the whole array.
func needOf(paths []ast.Ref) *Need {
	root := &Need{}
	for _, p := range paths {
		n := root
		for _, t := range p[1:] {
			if n.All {
				break
			}
			s, ok := t.Value.(ast.String)
			if !ok { // a number: an array element
				n.All = true
				break
			}
			if n.children == nil {
				n.children = map[string]*Need{}
			}
			c := n.children[string(s)]
			if c == nil {
				c = &Need{}
				n.children[string(s)] = c
			}
			n = c
		}
		n.All, n.children = true, nil
	}
	if len(paths) == 0 {
		return &Need{} // nothing: a constant policy
	}
	return root
}

// NeedFor returns the need of a set of input references (for tools and
// tests; Compile computes a policy set's own).
func NeedFor(paths []ast.Ref) *Need { return needOf(paths) }
