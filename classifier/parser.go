package classifier

import (
	"fmt"
	"sync"

	"github.com/handoff-lb/handoff/config"
)

// A Parser extracts a classification key from the first bytes a client
// sends on a connection.
//
// Parse is called with every byte read so far, from the first byte of the
// connection on; data only grows between calls on one connection. It returns
// the key, or an error:
//
//   - [ErrNeedMore]: more bytes could complete a key; call again with more.
//   - an error wrapping [ErrNoMatch]: the bytes are well formed but will
//     never yield a key.
//   - an error wrapping [ErrTooLong]: the key cannot fit within the bytes
//     the parser accepts.
//   - any other error: the bytes are garbage; [Read] wraps it in
//     [ErrMalformed].
//
// Once Parse returns something other than ErrNeedMore for some data, it must
// return the same for any longer data that begins with it: the answer may not
// depend on how the bytes were split into reads. An empty key counts as
// ErrNoMatch.
//
// One Parser serves every connection of a service, so Parse must be safe for
// concurrent use. It must not retain or modify data, and the returned key
// must not alias it (data is a pooled buffer).
type Parser interface {
	Parse(data []byte) (key string, err error)
}

// ParserFunc adapts a function to a [Parser].
type ParserFunc func(data []byte) (key string, err error)

// Parse calls f(data).
func (f ParserFunc) Parse(data []byte) (string, error) { return f(data) }

// NewParserFunc makes the Parser of one service from its payload settings
// (max_bytes, timeout; pattern for classify: payload), as config gives
// them: with config's defaults applied, MaxBytes and Timeout positive. It
// is called each time a service's [Router] is built.
type NewParserFunc func(config.Payload) (Parser, error)

var (
	registryMu sync.RWMutex
	registry   = map[config.Classify]NewParserFunc{}
)

// Register makes a key extractor available as `classify: name` in the
// config, for users who build their own handoff binary with a parser for
// their own protocol. It also calls [config.RegisterClassify], so that the
// config accepts the name. Call it from an init function, before the config
// is loaded:
//
//	func init() {
//		classifier.Register("myproto", func(p config.Payload) (classifier.Parser, error) {
//			return myParser{}, nil
//		})
//	}
//
// The name must pass [config.CheckClassifyName]; it also prefixes the key's
// label ("myproto=KEY"). Register panics if the name is invalid, nil is
// passed, or the name is already registered (the built-ins "source",
// "payload", "sni" and "http-host" are).
func Register(name string, newParser NewParserFunc) {
	if err := config.CheckClassifyName(name); err != nil {
		panic(fmt.Sprintf("classifier: Register: %v", err))
	}
	register(name, newParser)
	config.RegisterClassify(name)
}

// register adds newParser to the registry; the name is valid.
func register(name string, newParser NewParserFunc) {
	if newParser == nil {
		panic(fmt.Sprintf("classifier: Register(%q): nil constructor", name))
	}
	c := config.Classify(name)
	registryMu.Lock()
	defer registryMu.Unlock()
	if _, dup := registry[c]; dup || c == config.ClassifySource {
		panic(fmt.Sprintf("classifier: Register: %q registered twice", name))
	}
	registry[c] = newParser
}

func init() {
	// The built-ins are known to config already.
	register(string(config.ClassifyPayload), newPayloadParser)
	register(string(config.ClassifySNI), func(p config.Payload) (Parser, error) {
		if p.MaxBytes <= 0 {
			return nil, fmt.Errorf("classify sni: max_bytes %d: want more than 0", p.MaxBytes)
		}
		return sniParser{max: p.MaxBytes}, nil
	})
	register(string(config.ClassifyHTTPHost), func(config.Payload) (Parser, error) {
		return httpHostParser{}, nil
	})
}

// NewParser returns the Parser for classify kind c with payload settings p,
// taken as config gives them (see [config.DefaultPayload]): the built-in
// parsers refuse a MaxBytes of 0 rather than default it. It fails for
// classify: source, which reads no bytes, and for unregistered names.
func NewParser(c config.Classify, p config.Payload) (Parser, error) {
	if c == config.ClassifySource {
		return nil, fmt.Errorf("classify %q reads no bytes", c)
	}
	registryMu.RLock()
	newParser := registry[c]
	registryMu.RUnlock()
	if newParser == nil {
		return nil, fmt.Errorf("classify %q: not registered", c)
	}
	return newParser(p)
}
