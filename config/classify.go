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

// classifyNameRE is the form of a registered classify name, which also
// prefixes the labels of its pins ("name=KEY").
var classifyNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,31}$`)

// CheckClassifyName returns an error unless name has the form of a classify
// name that may be registered: 1 to 32 lower-case letters, digits and '-',
// starting with a letter or digit. Whether it is free is not checked.
func CheckClassifyName(name string) error {
	if !classifyNameRE.MatchString(name) {
		return fmt.Errorf("classify name %q: want 1 to 32 lower-case letters, digits and '-', starting with a letter or digit", name)
	}
	return nil
}

// RegisterClassify makes `classify: name` valid, for a key extractor that
// the classifier package registers beyond the built-in ones. Call it from
// an init function; it is safe for concurrent use. It panics when name
// fails CheckClassifyName, is built in, or is already registered.
func RegisterClassify(name string) {
	if err := CheckClassifyName(name); err != nil {
		panic(fmt.Sprintf("config: RegisterClassify: %v", err))
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
