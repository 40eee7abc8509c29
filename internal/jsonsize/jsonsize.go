package jsonsize

import "encoding/json"

// Of is the accounted size of a decoded JSON value (maps, slices,
// strings, json.Number, bools, float64s, nil): its strings plus a
// per-value overhead.
func Of(v any) int {
	const word = 16 // an interface value
	switch x := v.(type) {
	case string:
		return word + 16 + len(x)
	case json.Number:
		return word + 16 + len(x)
	case map[string]any:
		n := word + 48
		for k, e := range x {
			n += 16 + len(k) + Of(e) + 16 // key, value, bucket share
		}
		return n
	case []any:
		n := word + 24
		for _, e := range x {
			n += Of(e)
		}
		return n
	}
	return word + 8
}
