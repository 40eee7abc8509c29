package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// decodeYAMLFile reads a YAML file strictly into v (a pointer to a config
// struct): an unknown key or a value of the wrong kind is an error naming
// the key by its path in the file (limits.max_inflight), never by a Go type.
// All problems are reported at once, on one line.
func decodeYAMLFile(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	var root yaml.Node
	if err := yaml.Unmarshal(b, &root); err != nil {
		return fmt.Errorf("config %s: %s", path, yamlError(err))
	}
	if len(root.Content) == 0 {
		return nil // an empty file is fine
	}
	if problems := checkYAML(root.Content[0], reflect.TypeOf(v).Elem(), ""); len(problems) > 0 {
		return fmt.Errorf("config %s: %s", path, strings.Join(problems, "; "))
	}
	// checkYAML found nothing: decoding strictly is a backstop only.
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(v); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("config %s: %s", path, yamlError(err))
	}
	return nil
}

// yamlError is a YAML error on one line, without yaml.v3's prefixes.
func yamlError(err error) string {
	return strings.ReplaceAll(strings.ReplaceAll(oneLine(err).Error(), "yaml: unmarshal errors: ", ""), "yaml: ", "")
}

var durationType = reflect.TypeFor[time.Duration]()

// checkYAML walks n along the struct type t and reports, by key path, every
// unknown key and every value that does not decode into its field.
func checkYAML(n *yaml.Node, t reflect.Type, path string) []string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	switch {
	case t.Kind() == reflect.Struct && n.Kind == yaml.MappingNode:
		var problems []string
		fields := yamlFields(t)
		for i := 0; i+1 < len(n.Content); i += 2 {
			key, val := n.Content[i], n.Content[i+1]
			ft, ok := fields[key.Value]
			if !ok {
				in := path
				if in == "" {
					in = "the top level"
				}
				problems = append(problems, fmt.Sprintf("unknown key %q in %s (line %d)", key.Value, in, key.Line))
				continue
			}
			problems = append(problems, checkYAML(val, ft, joinKey(path, key.Value))...)
		}
		return problems
	case t.Kind() == reflect.Slice && t.Elem().Kind() != reflect.Uint8 && n.Kind == yaml.SequenceNode:
		var problems []string
		for i, e := range n.Content {
			problems = append(problems, checkYAML(e, t.Elem(), fmt.Sprintf("%s[%d]", path, i))...)
		}
		return problems
	}
	if err := n.Decode(reflect.New(t).Interface()); err != nil {
		if reflect.PointerTo(t).Implements(unmarshalerType) {
			// a type that decodes itself says what it wants
			return []string{fmt.Sprintf("%s: %s", path, yamlError(err))}
		}
		return []string{fmt.Sprintf("%s: %q is not %s (line %d)", path, n.Value, kindName(t), n.Line)}
	}
	return nil
}

var unmarshalerType = reflect.TypeFor[yaml.Unmarshaler]()

// yamlFields maps the YAML keys of struct t to their field types, inlined
// structs included.
func yamlFields(t reflect.Type) map[string]reflect.Type {
	out := map[string]reflect.Type{}
	for f := range t.Fields() {
		if !f.IsExported() {
			continue
		}
		name, opts, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		switch {
		case name == "-":
		case strings.Contains(opts, "inline"):
			for k, v := range yamlFields(f.Type) {
				out[k] = v
			}
		case name == "":
			out[strings.ToLower(f.Name)] = f.Type
		default:
			out[name] = f.Type
		}
	}
	return out
}

// joinKey appends key to a dotted key path.
func joinKey(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// kindName says what a value of type t must be, in a config file's terms.
func kindName(t reflect.Type) string {
	if t == durationType {
		return "a duration (e.g. 30s, 5m)"
	}
	switch t.Kind() {
	case reflect.Bool:
		return "true or false"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "a whole number"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.String:
		return "a string"
	case reflect.Slice:
		return "a list"
	case reflect.Struct, reflect.Map:
		return "a mapping of keys"
	}
	return "a valid value"
}
