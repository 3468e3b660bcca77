package config

import (
	"fmt"
	"sort"
	"strings"
)

// Error is one problem in a config file, at the YAML node that causes it.
type Error struct {
	File   string // as passed to Parse; "" omits it from Error()
	Line   int    // 1-based
	Column int    // 1-based
	Msg    string // names the object and the field, e.g. `service "web": listen: ...`
}

// Error formats e as FILE:LINE:COL: message.
func (e Error) Error() string {
	if e.File == "" {
		return fmt.Sprintf("%d:%d: %s", e.Line, e.Column, e.Msg)
	}
	return fmt.Sprintf("%s:%d:%d: %s", e.File, e.Line, e.Column, e.Msg)
}

// Errors is every problem Parse found, sorted by position. Parse returns it
// (never an empty one) as its error.
type Errors []Error

// Error lists the errors one per line.
func (es Errors) Error() string {
	lines := make([]string, len(es))
	for i, e := range es {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

// Unwrap returns the errors one by one, for errors.As and errors.Is.
func (es Errors) Unwrap() []error {
	out := make([]error, len(es))
	for i, e := range es {
		out[i] = e
	}
	return out
}

// sorted orders es by position, keeping the order of errors at the same
// position, and drops exact repeats (an anchor reported once per alias).
func (es Errors) sorted() Errors {
	sort.SliceStable(es, func(i, j int) bool {
		if es[i].Line != es[j].Line {
			return es[i].Line < es[j].Line
		}
		return es[i].Column < es[j].Column
	})
	seen := make(map[Error]bool, len(es))
	out := es[:0]
	for _, e := range es {
		if !seen[e] {
			seen[e] = true
			out = append(out, e)
		}
	}
	return out
}
