package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"regexp"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"go.yaml.in/yaml/v3"
)

// This file walks yaml.Node trees: decoding, aliases, mappings with
// duplicate and unknown key checks, and typed scalars. Every problem is
// recorded with the position of its node and the walk goes on, so one pass
// reports everything.

// Aliases may expand a document to at most aliasFactor times its own size
// plus aliasSlack nodes, so that a few lines of nested aliases cannot make
// the walk take forever (a billion laughs), while a list of backends shared
// by a few services is fine.
const (
	aliasFactor = 10
	aliasSlack  = 10000
)

// parser collects the errors of one Parse.
type parser struct {
	file  string
	files bool // check the files the config names (Load)
	errs  Errors
	// kernelMode: the config may run in kernel mode (kernel or auto), whose
	// backends must be addresses DNAT can forward to.
	kernelMode bool
}

// errorf records an error at n (1:1 when n carries no position).
func (p *parser) errorf(n *yaml.Node, format string, args ...any) {
	line, col := 1, 1
	if n != nil && n.Line > 0 {
		line, col = n.Line, max(n.Column, 1)
	}
	p.errs = append(p.errs, Error{File: p.file, Line: line, Column: col, Msg: fmt.Sprintf(format, args...)})
}

// at records an error about field label of object where, e.g.
// `service "web": health.interval: ...`.
func (p *parser) at(n *yaml.Node, where, label, format string, args ...any) {
	p.errorf(n, "%s%s", prefix(where, label), fmt.Sprintf(format, args...))
}

func prefix(where, label string) string {
	switch {
	case where != "" && label != "":
		return where + ": " + label + ": "
	case where != "":
		return where + ": "
	case label != "":
		return label + ": "
	}
	return ""
}

// decode parses data into its root node; nil after a syntax error, an empty
// document or an alias problem, all of them recorded.
func (p *parser) decode(data []byte) (root *yaml.Node) {
	docs, err := decodeDocs(data)
	if err != nil {
		p.syntax(err, data)
		return nil
	}
	if len(docs) == 0 || docs[0].Kind != yaml.DocumentNode || len(docs[0].Content) == 0 {
		p.errorf(nil, "the config is empty; it needs at least a services list")
		return nil
	}
	if len(docs) > 1 {
		p.errorf(docs[1].Content[0], "a second YAML document; a config is a single document")
	}
	root = docs[0].Content[0]
	if !p.checkAliases(root) {
		return nil
	}
	return root
}

// decodeDocs decodes the first document of data and the first non-empty
// one after it, if any: enough to tell that there is more than one. A panic
// inside the YAML library becomes an error.
func decodeDocs(data []byte) (docs []*yaml.Node, err error) {
	defer func() {
		if r := recover(); r != nil {
			docs, err = nil, fmt.Errorf("yaml: internal error: %v", r)
		}
	}()
	dec := yaml.NewDecoder(bytes.NewReader(data))
	for len(docs) < 2 {
		var doc yaml.Node
		if err := dec.Decode(&doc); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			return nil, err
		}
		if len(docs) == 0 || len(doc.Content) > 0 && !isNull(doc.Content[0]) {
			docs = append(docs, &doc)
		}
	}
	return docs, nil
}

var (
	yamlLineRE   = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)
	yamlAnchorRE = regexp.MustCompile(`^yaml: unknown anchor '(.*)' referenced$`)
	bigIntRE     = regexp.MustCompile(`^[-+]?[0-9][0-9_]*$`) // an integer YAML resolved as a float: too big
)

// syntax records a YAML syntax error. The YAML library's line numbers are
// approximate (its parser errors count from 0 and point at the enclosing
// block), so the line is found again as the first line after which the
// document fails with the same problem.
func (p *parser) syntax(err error, data []byte) {
	msg := err.Error()
	problem := strings.TrimPrefix(msg, "yaml: ")
	line := 0
	if m := yamlLineRE.FindStringSubmatch(msg); m != nil {
		problem = m[2]
		line, _ = strconv.Atoi(m[1])
	}
	e := Error{File: p.file, Line: max(line, 1), Column: 1, Msg: "invalid YAML: " + problem}
	if m := yamlAnchorRE.FindStringSubmatch(msg); m != nil {
		e.Line, e.Column = position(data, aliasOffset(data, m[1]))
	} else if off := badByte(data); off >= 0 && (strings.Contains(problem, "control characters") || strings.Contains(problem, "UTF")) {
		e.Line, e.Column = position(data, off)
	} else if l := failingLine(data, problem); l > 0 {
		e.Line = l
	}
	p.errs = append(p.errs, e)
}

// failingLine returns the smallest n (by bisection) such that the first n
// lines of data fail to decode with problem, or 0.
func failingLine(data []byte, problem string) int {
	var ends []int // byte offset after each line
	for i, b := range data {
		if b == '\n' {
			ends = append(ends, i+1)
		}
	}
	if len(ends) == 0 || ends[len(ends)-1] != len(data) {
		ends = append(ends, len(data))
	}
	fails := func(n int) bool {
		_, err := decodeDocs(data[:ends[n-1]])
		if err == nil {
			return false
		}
		msg := err.Error()
		if m := yamlLineRE.FindStringSubmatch(msg); m != nil {
			return m[2] == problem
		}
		return strings.TrimPrefix(msg, "yaml: ") == problem
	}
	lo, hi := 1, len(ends)
	if !fails(hi) {
		return 0
	}
	for lo < hi {
		mid := (lo + hi) / 2
		if fails(mid) {
			hi = mid
		} else {
			lo = mid + 1
		}
	}
	return lo
}

// aliasOffset returns the offset of the first use of alias *name, or 0.
func aliasOffset(data []byte, name string) int {
	for off := 0; ; {
		i := bytes.Index(data[off:], []byte("*"+name))
		if i < 0 {
			return 0
		}
		end := off + i + 1 + len(name)
		if end == len(data) || strings.IndexByte(" \t\r\n,]}", data[end]) >= 0 {
			return off + i
		}
		off += i + 1
	}
}

// badByte returns the offset of the first byte YAML refuses (invalid UTF-8
// or a control character), or -1.
func badByte(data []byte) int {
	for i := 0; i < len(data); {
		r, n := utf8.DecodeRune(data[i:])
		if r == utf8.RuneError && n == 1 {
			return i
		}
		if (r < 0x20 && r != '\t' && r != '\n' && r != '\r') || r == 0x7f {
			return i
		}
		i += n
	}
	return -1
}

// position converts a byte offset to a 1-based line and column.
func position(data []byte, off int) (line, col int) {
	before := data[:off]
	line = bytes.Count(before, []byte("\n")) + 1
	start := bytes.LastIndexByte(before, '\n') + 1
	return line, utf8.RuneCount(before[start:]) + 1
}

// checkAliases makes sure the walk is finite and small: no alias refers to
// a node that contains it, and aliases expand the document within
// aliasFactor and aliasSlack. It reports false after recording the problem.
func (p *parser) checkAliases(root *yaml.Node) bool {
	const visiting = -1
	size := make(map[*yaml.Node]int) // expanded size of each non-alias node
	literal := 0                     // nodes as written
	ok := true
	var walk func(n *yaml.Node) int
	walk = func(n *yaml.Node) int {
		if n == nil || !ok {
			return 0
		}
		if n.Kind == yaml.AliasNode {
			literal++
			if n.Alias != nil && size[n.Alias] == visiting {
				p.errorf(n, "alias *%s refers to a node that contains it", n.Value)
				ok = false
				return 0
			}
			return 1 + walk(n.Alias)
		}
		if s, seen := size[n]; seen {
			return s
		}
		literal++
		size[n] = visiting
		total := 1
		for _, c := range n.Content {
			total = min(total+walk(c), math.MaxInt32)
		}
		size[n] = total
		return total
	}
	expanded := walk(root)
	if limit := aliasFactor*literal + aliasSlack; ok && expanded > limit {
		p.errorf(root, "aliases expand the document from %d to %d nodes, more than the %d allowed", literal, expanded, limit)
		return false
	}
	return ok
}

// resolve follows an alias. The result is a shallow copy of the anchored node
// carrying the position of the alias, so that errors about the value point at
// where it is used.
func resolve(n *yaml.Node) *yaml.Node {
	if n == nil || n.Kind != yaml.AliasNode {
		return n
	}
	use := n
	for i := 0; n != nil && n.Kind == yaml.AliasNode && i < 100; i++ {
		n = n.Alias
	}
	if n == nil || n.Kind == yaml.AliasNode {
		return nil
	}
	c := *n
	c.Line, c.Column = use.Line, use.Column
	return &c
}

func isNull(n *yaml.Node) bool {
	return n == nil || (n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null")
}

// describe names what a node is, for "expected X, found Y".
func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		switch n.ShortTag() {
		case "!!null":
			return "nothing"
		case "!!str":
			return fmt.Sprintf("the string %q", n.Value)
		case "!!int", "!!float":
			return "the number " + n.Value
		case "!!bool":
			return "the boolean " + n.Value
		}
		return fmt.Sprintf("%q", n.Value)
	}
	return "an alias"
}

// fields is one YAML mapping being read as an object, or a section of one.
// Methods that read a key record every problem with it and return the
// default, so callers go on with a usable value.
type fields struct {
	p     *parser
	where string     // the object, e.g. `service "web"`; "" at the top level
	path  string     // this section within the object, e.g. "health"; "" for the object itself
	node  *yaml.Node // the mapping; nil when absent
	bad   bool       // the node is not a mapping (reported)
	keys  map[string]*yaml.Node
	vals  map[string]*yaml.Node // aliases resolved
}

// mapping reads n as a mapping with the given known keys. hints maps keys
// that belong elsewhere to where they belong, for better suggestions. A nil
// or null n is an empty, absent mapping.
func (p *parser) mapping(n *yaml.Node, where, path string, known []string, hints map[string]string) *fields {
	f := &fields{p: p, where: where, path: path, keys: map[string]*yaml.Node{}, vals: map[string]*yaml.Node{}}
	n = resolve(n)
	if isNull(n) {
		return f
	}
	if n.Kind != yaml.MappingNode {
		p.at(n, where, path, "expected a mapping, found %s", describe(n))
		f.bad = true
		return f
	}
	f.node = n
	f.add(n, known, hints, true, 0)
	return f
}

// add records the entries of mapping n. Explicit entries (top is true)
// are checked for duplicates; entries merged in with "<<" only fill keys
// not already set, earlier merges first, as YAML merge keys do.
func (f *fields) add(n *yaml.Node, known []string, hints map[string]string, top bool, depth int) {
	label := strings.TrimSuffix(f.path, ".")
	var merges []*yaml.Node
	local := map[string]*yaml.Node{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := resolve(n.Content[i]), n.Content[i+1]
		if k == nil || k.Kind != yaml.ScalarNode {
			if k != nil {
				f.p.at(k, f.where, label, "keys must be strings, found %s", describe(k))
			}
			continue
		}
		if k.ShortTag() == "!!merge" {
			merges = append(merges, v)
			continue
		}
		name := k.Value
		if first, dup := local[name]; dup {
			f.p.at(k, f.where, label, "duplicate key %q (first at line %d)", name, first.Line)
			continue
		}
		local[name] = k
		if f.where == "" && f.path == "" && strings.HasPrefix(name, "x-") {
			continue // extension keys at the top level hold anchors
		}
		if !contains(known, name) {
			f.p.at(k, f.where, label, "unknown key %q%s", name, suggest(name, known, hints))
			continue
		}
		if _, set := f.keys[name]; set && !top {
			continue // an explicit key or an earlier merge wins
		}
		f.keys[name], f.vals[name] = k, resolve(v)
	}
	for _, m := range merges {
		if depth > 32 {
			f.p.at(m, f.where, label, "merge keys nested too deep")
			return
		}
		m = resolve(m)
		switch {
		case m != nil && m.Kind == yaml.MappingNode:
			f.add(m, known, hints, false, depth+1)
		case m != nil && m.Kind == yaml.SequenceNode:
			for _, item := range m.Content {
				item = resolve(item)
				if item == nil || item.Kind != yaml.MappingNode {
					if item != nil {
						f.p.at(item, f.where, label, "<<: expected a mapping to merge, found %s", describe(item))
					}
					continue
				}
				f.add(item, known, hints, false, depth+1)
			}
		case m != nil:
			f.p.at(m, f.where, label, "<<: expected a mapping or a list of mappings to merge, found %s", describe(m))
		}
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// suggest returns `; did you mean "x"?` for the known key closest to name,
// the valid keys of a small mapping, or "".
func suggest(name string, known []string, hints map[string]string) string {
	if best := closest(name, known); best != "" {
		return fmt.Sprintf("; did you mean %q?", best)
	}
	if h, ok := hints[name]; ok {
		return fmt.Sprintf("; did you mean %q?", h)
	}
	if len(known) <= 8 {
		return "; valid keys: " + strings.Join(known, ", ")
	}
	return ""
}

// closest returns the candidate within a small edit distance of s, or "".
func closest(s string, candidates []string) string {
	best, bestD := "", 3
	ls := strings.ToLower(s)
	for _, c := range candidates {
		d := editDistance(ls, c)
		limit := 2
		if len(c) <= 4 {
			limit = 1
		}
		if d <= limit && d < bestD {
			best, bestD = c, d
		}
	}
	return best
}

// editDistance is the optimal string alignment distance: insertions,
// deletions, substitutions and transpositions of adjacent bytes.
func editDistance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return math.MaxInt
	}
	d := make([][]int, len(a)+1)
	for i := range d {
		d[i] = make([]int, len(b)+1)
		d[i][0] = i
	}
	for j := range d[0] {
		d[0][j] = j
	}
	for i := 1; i <= len(a); i++ {
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			d[i][j] = min(d[i-1][j]+1, d[i][j-1]+1, d[i-1][j-1]+cost)
			if i > 1 && j > 1 && a[i-1] == b[j-2] && a[i-2] == b[j-1] {
				d[i][j] = min(d[i][j], d[i-2][j-2]+1)
			}
		}
	}
	return d[len(a)][len(b)]
}

// label is key's name as messages show it: "health.interval".
func (f *fields) label(key string) string {
	if f.path == "" {
		return key
	}
	return f.path + "." + key
}

// errorf records an error about key.
func (f *fields) errorf(n *yaml.Node, key, format string, args ...any) {
	f.p.at(n, f.where, f.label(key), format, args...)
}

// present reports whether key is written, even with a null value.
func (f *fields) present(key string) bool { return f.keys[key] != nil }

// has reports whether key is written with a non-null value.
func (f *fields) has(key string) bool { return f.keys[key] != nil && !isNull(f.vals[key]) }

// pos returns the best node to report a problem about key at: its key,
// else the mapping, else nil.
func (f *fields) pos(key string) *yaml.Node {
	if k := f.keys[key]; k != nil {
		return k
	}
	return f.node
}

// required reports whether key has a value, recording an error if not.
// Nothing is recorded for a mapping that is itself missing or malformed.
func (f *fields) required(key string) bool {
	if f.has(key) {
		return true
	}
	if f.bad {
		return false
	}
	f.p.at(f.pos(key), f.where, f.label(key), "required")
	return false
}

// scalar returns key's value node if it is a scalar; nil when absent, null
// or of another kind (recorded).
func (f *fields) scalar(key string) *yaml.Node {
	if !f.has(key) {
		return nil
	}
	v := f.vals[key]
	if v.Kind != yaml.ScalarNode {
		f.errorf(v, key, "expected a single value, found %s", describe(v))
		return nil
	}
	return v
}

// str returns key's value as a string, and its node (nil when absent or
// invalid, in which case def is returned).
func (f *fields) str(key, def string) (string, *yaml.Node) {
	v := f.scalar(key)
	if v == nil {
		return def, nil
	}
	return v.Value, v
}

// boolean returns key's value as a boolean; YAML 1.1 spellings (yes, no,
// on, off) are accepted as for a typed bool in yaml.v3.
func (f *fields) boolean(key string, def bool) bool {
	v := f.scalar(key)
	if v == nil {
		return def
	}
	switch v.Value {
	case "true", "True", "TRUE", "yes", "Yes", "YES", "on", "On", "ON", "y", "Y":
		return true
	case "false", "False", "FALSE", "no", "No", "NO", "off", "Off", "OFF", "n", "N":
		return false
	}
	f.errorf(v, key, "expected true or false, found %s", describe(v))
	return def
}

// isBool reports whether s is one of the spellings boolean accepts.
func isBool(s string) bool {
	switch s {
	case "true", "True", "TRUE", "yes", "Yes", "YES", "on", "On", "ON", "y", "Y",
		"false", "False", "FALSE", "no", "No", "NO", "off", "Off", "OFF", "n", "N":
		return true
	}
	return false
}

// integer returns key's value, an integer within lo..hi.
func (f *fields) integer(key string, def, lo, hi int) (int, *yaml.Node) {
	v := f.scalar(key)
	if v == nil {
		return def, nil
	}
	n, ok := f.p.integer(v, f.where, f.label(key), lo, hi)
	if !ok {
		return def, nil
	}
	return n, v
}

// anyInteger returns key's value, an integer of any size. One beyond the
// range of int comes back as the nearest int, so that a range check made
// afterwards (quoting the value as written) refuses it.
func (f *fields) anyInteger(key string, def int) (int, *yaml.Node) {
	v := f.scalar(key)
	if v == nil {
		return def, nil
	}
	text := strings.ReplaceAll(v.Value, "_", "")
	switch {
	case v.ShortTag() == "!!int":
		if n, err := strconv.ParseInt(text, 0, 64); err == nil && n >= math.MinInt && n <= math.MaxInt {
			return int(n), v
		}
	case v.ShortTag() == "!!float" && bigIntRE.MatchString(v.Value):
	default:
		f.errorf(v, key, "expected an integer, found %s", describe(v))
		return def, nil
	}
	if strings.HasPrefix(text, "-") {
		return math.MinInt, v
	}
	return math.MaxInt, v
}

// integer reads scalar v as an integer within lo..hi.
func (p *parser) integer(v *yaml.Node, where, label string, lo, hi int) (int, bool) {
	if v.Kind == yaml.ScalarNode && v.ShortTag() == "!!float" && bigIntRE.MatchString(v.Value) {
		p.at(v, where, label, "%s is out of range %d..%d", v.Value, lo, hi)
		return 0, false
	}
	if v.Kind != yaml.ScalarNode || v.ShortTag() != "!!int" {
		p.at(v, where, label, "expected an integer, found %s", describe(v))
		return 0, false
	}
	n, err := strconv.ParseInt(strings.ReplaceAll(v.Value, "_", ""), 0, 64)
	if err != nil || n < int64(lo) || n > int64(hi) {
		p.at(v, where, label, "%s is out of range %d..%d", v.Value, lo, hi)
		return 0, false
	}
	return int(n), true
}

// duration returns key's value, a non-negative Go duration.
func (f *fields) duration(key string, def time.Duration) (time.Duration, *yaml.Node) {
	v := f.scalar(key)
	if v == nil {
		return def, nil
	}
	d, err := time.ParseDuration(v.Value)
	if err != nil {
		f.errorf(v, key, "%q is not a duration; write a Go duration like 500ms, 30s, 5m or 1h30m", v.Value)
		return def, nil
	}
	if d < 0 {
		f.errorf(v, key, "%s is negative", v.Value)
		return def, nil
	}
	if d > MaxDuration {
		f.errorf(v, key, "%s is too long: at most %v (100 years)", v.Value, MaxDuration)
		return def, nil
	}
	return d, v
}

// MaxDuration bounds every duration of the config: deadlines and timers
// add a fraction of a duration to the current time, and durations near
// Go's limit (2,562,047h) would overflow into the past.
const MaxDuration = 100 * 365 * 24 * time.Hour

// positive is duration for a value that must be above zero.
func (f *fields) positive(key string, def time.Duration) (time.Duration, *yaml.Node) {
	d, v := f.duration(key, def)
	if v != nil && d == 0 {
		f.errorf(v, key, "must be more than 0")
		return def, nil
	}
	return d, v
}

// enum returns key's value, one of valid; "" when it is not (recorded).
func (f *fields) enum(key, def string, valid []string) (string, *yaml.Node) {
	s, v := f.str(key, def)
	if v == nil || contains(valid, s) {
		return s, v
	}
	hint := ""
	if c := closest(s, valid); c != "" {
		hint = fmt.Sprintf("; did you mean %q?", c)
	}
	f.errorf(v, key, "%q is not one of %s%s", s, strings.Join(valid, ", "), hint)
	return "", nil
}

// enum is fields.enum for a value of a string type T.
func enum[T ~string](f *fields, key string, def T, valid []T) (T, *yaml.Node) {
	names := make([]string, len(valid))
	for i, v := range valid {
		names[i] = string(v)
	}
	s, n := f.enum(key, string(def), names)
	return T(s), n
}

// list returns the items of key's value, aliases resolved, and the list's
// node; nil, nil when absent or not a list (recorded).
func (f *fields) list(key string) ([]*yaml.Node, *yaml.Node) {
	if !f.has(key) {
		return nil, nil
	}
	v := f.vals[key]
	if v.Kind != yaml.SequenceNode {
		f.errorf(v, key, "expected a list, found %s", describe(v))
		return nil, nil
	}
	items := make([]*yaml.Node, 0, len(v.Content))
	for _, it := range v.Content {
		if it = resolve(it); it != nil {
			items = append(items, it)
		}
	}
	return items, v
}

// sub returns key's value as a section of the same object.
func (f *fields) sub(key string, known []string) *fields {
	return f.p.mapping(f.vals[key], f.where, f.label(key), known, nil)
}

// peekName returns the scalar value of a mapping's "name" key, if any, so
// that errors about an object can name it before it is read.
func peekName(n *yaml.Node) string {
	n = resolve(n)
	if n == nil || n.Kind != yaml.MappingNode {
		return ""
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := resolve(n.Content[i]), resolve(n.Content[i+1])
		if k != nil && v != nil && k.Kind == yaml.ScalarNode && k.Value == "name" && v.Kind == yaml.ScalarNode && !isNull(v) {
			return v.Value
		}
	}
	return ""
}
