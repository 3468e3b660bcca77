package config

import (
	"fmt"
	"regexp"
	"slices"
	"sync"
)

var builtinClassify = []Classify{ClassifySource, ClassifyPayload, ClassifySNI, ClassifyHTTPHost}

var registered struct {
	sync.RWMutex
	names map[string]bool
}

var classifyNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_.-]*$`)

// RegisterClassify makes `classify: name` valid, for a key extractor that
// the classifier package registers beyond the built-in ones. Call it from
// an init function; it is safe for concurrent use. It panics when name is
// not lower-case letters, digits, '-', '_' and '.', is built in, or is
// already registered.
func RegisterClassify(name string) {
	if !classifyNameRE.MatchString(name) {
		panic(fmt.Sprintf("config: RegisterClassify(%q): invalid name", name))
	}
	if slices.Contains(builtinClassify, Classify(name)) {
		panic(fmt.Sprintf("config: RegisterClassify(%q): built in", name))
	}
	registered.Lock()
	defer registered.Unlock()
	if registered.names[name] {
		panic(fmt.Sprintf("config: RegisterClassify(%q): registered twice", name))
	}
	if registered.names == nil {
		registered.names = make(map[string]bool)
	}
	registered.names[name] = true
}

// classifiers returns the valid classify values: the built-in ones, then
// the registered ones sorted.
func classifiers() []Classify {
	registered.RLock()
	defer registered.RUnlock()
	extra := make([]Classify, 0, len(registered.names))
	for n := range registered.names {
		extra = append(extra, Classify(n))
	}
	slices.Sort(extra)
	return append(slices.Clone(builtinClassify), extra...)
}
