package classifier

import (
	"errors"
	"fmt"
	"regexp"
	"regexp/syntax"
	"sync"
	"unicode/utf8"

	"github.com/handoff-lb/handoff/config"
)

// payloadParser implements classify: payload. The key is the first capture
// group of the pattern if it has one, else the whole match.
//
// The bytes are a stream whose end is never seen, so the pattern is run by a
// streaming NFA (the Pike VM of package regexp, over the same compiled
// program) that tells a final answer from one that more bytes could change:
// a match is final once no thread of higher priority (leftmost-first) is
// still alive; "no match" is final once an anchored pattern has no live
// thread. An unanchored pattern without a match always needs more. Hence
// `$` and `\z`, which need the end of the stream, never match before
// max_bytes; end patterns with a delimiter such as `\n` instead.
//
// If MaxBytes are read without a final answer, they are matched as a
// complete text with package regexp, and no match there is ErrTooLong.
type payloadParser struct {
	re       *regexp.Regexp
	prog     *syntax.Prog
	max      int
	group    bool // the key is capture group 1, not the whole match
	anchored bool // the program can only match at offset 0
	never    bool // the program can never match
	machines sync.Pool
}

func newPayloadParser(p config.Payload) (Parser, error) {
	if p.Pattern == nil {
		return nil, errors.New("classify payload: no pattern")
	}
	if p.MaxBytes <= 0 {
		return nil, fmt.Errorf("classify payload: max_bytes %d: want more than 0", p.MaxBytes)
	}
	// Compile the pattern exactly as regexp.Compile does.
	re, err := syntax.Parse(p.Pattern.String(), syntax.Perl)
	if err != nil {
		return nil, fmt.Errorf("classify payload: pattern %q: %w", p.Pattern, err)
	}
	prog, err := syntax.Compile(re.Simplify())
	if err != nil {
		return nil, fmt.Errorf("classify payload: pattern %q: %w", p.Pattern, err)
	}
	cond := prog.StartCond()
	pp := &payloadParser{
		re:       p.Pattern,
		prog:     prog,
		max:      p.MaxBytes,
		group:    p.Pattern.NumSubexp() > 0,
		anchored: cond&syntax.EmptyBeginText != 0,
		never:    cond == ^syntax.EmptyOp(0),
	}
	n := len(prog.Inst)
	pp.machines.New = func() any {
		return &pikeVM{
			q0: pikeQueue{sparse: make([]uint32, n), dense: make([]pikeEntry, 0, n)},
			q1: pikeQueue{sparse: make([]uint32, n), dense: make([]pikeEntry, 0, n)},
		}
	}
	return pp, nil
}

func (p *payloadParser) Parse(data []byte) (string, error) {
	if len(data) > p.max {
		data = data[:p.max]
	}
	m := p.machines.Get().(*pikeVM)
	res, caps := m.run(p, data)
	p.machines.Put(m)
	if res == pikeMore && len(data) == p.max {
		// No more bytes will come: match the bytes read as a whole text.
		m := p.re.FindSubmatchIndex(data)
		if m == nil {
			return "", fmt.Errorf("%w: pattern did not match the first %d bytes", ErrTooLong, p.max)
		}
		res, caps = pikeMatch, [4]int{m[0], m[1], -1, -1}
		if len(m) >= 4 {
			caps[2], caps[3] = m[2], m[3]
		}
	}
	switch res {
	case pikeMore:
		return "", ErrNeedMore
	case pikeNoMatch:
		return "", fmt.Errorf("%w: pattern cannot match", ErrNoMatch)
	}
	lo, hi := caps[0], caps[1]
	if p.group {
		lo, hi = caps[2], caps[3]
	}
	if lo < 0 || hi <= lo {
		return "", fmt.Errorf("%w: empty key", ErrNoMatch)
	}
	return string(data[lo:hi]), nil
}

type pikeResult uint8

const (
	pikeMore pikeResult = iota
	pikeMatch
	pikeNoMatch
)

type entryKind uint8

const (
	entryNone    entryKind = iota // a visited instruction with no thread
	entryThread                   // a thread waiting on a rune or at Match
	entryPending                  // an assertion that needs the next, unread rune
)

type pikeEntry struct {
	pc   uint32
	kind entryKind
	cap  [4]int // match start/end and group 1 start/end
}

type pikeQueue struct {
	sparse []uint32
	dense  []pikeEntry
}

func (q *pikeQueue) has(pc uint32) bool {
	j := q.sparse[pc]
	return j < uint32(len(q.dense)) && q.dense[j].pc == pc
}

// pikeVM is the scratch state of one run; pooled per parser.
type pikeVM struct {
	q0, q1 pikeQueue
}

// pikeCtx describes the position at which threads are added: the flags that
// hold there, and whether the rune after it is still unread.
type pikeCtx struct {
	flags   syntax.EmptyOp
	unknown bool // the rune after the position is not read yet
}

// afterMask is the set of assertions that depend on the rune after a
// position.
const afterMask = syntax.EmptyEndLine | syntax.EmptyEndText | syntax.EmptyWordBoundary | syntax.EmptyNoWordBoundary

func ctxAt(before, after rune, haveAfter bool) pikeCtx {
	if haveAfter {
		return pikeCtx{flags: syntax.EmptyOpContext(before, after)}
	}
	// Only the assertions about the rune before are known.
	return pikeCtx{flags: syntax.EmptyOpContext(before, 'x') &^ afterMask, unknown: true}
}

// add follows empty transitions from pc, as regexp's machine.add does,
// putting threads on q in priority order.
func (m *pikeVM) add(p *payloadParser, q *pikeQueue, pc uint32, pos int, cap [4]int, c pikeCtx) {
	for {
		if pc == 0 || q.has(pc) {
			return
		}
		j := len(q.dense)
		q.dense = append(q.dense, pikeEntry{pc: pc})
		q.sparse[pc] = uint32(j)
		in := &p.prog.Inst[pc]
		switch in.Op {
		case syntax.InstFail:
			return
		case syntax.InstAlt, syntax.InstAltMatch:
			m.add(p, q, in.Out, pos, cap, c)
			pc = in.Arg
		case syntax.InstEmptyWidth:
			op := syntax.EmptyOp(in.Arg)
			if op&^afterMask&^c.flags != 0 {
				return // a known assertion fails
			}
			if c.unknown && op&afterMask != 0 {
				q.dense[j].kind = entryPending
				return
			}
			if op&^c.flags != 0 {
				return
			}
			pc = in.Out
		case syntax.InstNop:
			pc = in.Out
		case syntax.InstCapture:
			if in.Arg < 4 {
				cap[in.Arg] = pos
			}
			pc = in.Out
		default: // InstMatch and the rune instructions
			q.dense[j].kind = entryThread
			q.dense[j].cap = cap
			return
		}
	}
}

func runeMatches(in *syntax.Inst, r rune) bool {
	switch in.Op {
	case syntax.InstRune:
		return in.MatchRune(r)
	case syntax.InstRune1:
		return r == in.Rune[0]
	case syntax.InstRuneAny:
		return true
	case syntax.InstRuneAnyNotNL:
		return r != '\n'
	}
	return false
}

// run executes the program over data, the bytes of a stream read so far.
func (m *pikeVM) run(p *payloadParser, data []byte) (pikeResult, [4]int) {
	if p.never {
		return pikeNoMatch, [4]int{}
	}
	// An incomplete UTF-8 sequence at the end is not a rune yet.
	end := len(data)
	for k := 1; k <= utf8.UTFMax-1 && k <= len(data); k++ {
		if i := len(data) - k; utf8.RuneStart(data[i]) {
			if !utf8.FullRune(data[i:]) {
				end = i
			}
			break
		}
	}
	decode := func(pos int) (rune, int, bool) {
		if pos >= end {
			return 0, 0, false
		}
		r, w := utf8.DecodeRune(data[pos:end])
		return r, w, true
	}

	runq, nextq := &m.q0, &m.q1
	runq.dense, nextq.dense = runq.dense[:0], nextq.dense[:0]
	matched := false
	var best [4]int
	pos, prev := 0, rune(-1)
	r, w, have := decode(0)
	for {
		if len(runq.dense) == 0 {
			if p.anchored && pos != 0 {
				break
			}
			if matched {
				break
			}
		}
		if !matched && (pos == 0 || !p.anchored) {
			m.add(p, runq, uint32(p.prog.Start), pos, [4]int{pos, -1, -1, -1}, ctxAt(prev, r, have))
		}
		if !have {
			// End of the bytes read: decide whether more could change it.
			for _, e := range runq.dense {
				if e.kind == entryNone {
					continue
				}
				if e.kind == entryThread && p.prog.Inst[e.pc].Op == syntax.InstMatch {
					e.cap[1] = pos
					return pikeMatch, e.cap
				}
				return pikeMore, best // a live thread outranks any match so far
			}
			switch {
			case matched:
				return pikeMatch, best
			case p.anchored && pos != 0:
				return pikeNoMatch, best
			}
			return pikeMore, best
		}
		r1, w1, have1 := decode(pos + w)
		next := ctxAt(r, r1, have1)
		for j := 0; j < len(runq.dense); j++ {
			e := &runq.dense[j]
			if e.kind != entryThread {
				continue
			}
			in := &p.prog.Inst[e.pc]
			if in.Op == syntax.InstMatch {
				best = e.cap
				best[1] = pos
				matched = true
				break // leftmost-first: lower-priority threads are cut
			}
			if runeMatches(in, r) {
				m.add(p, nextq, in.Out, pos+w, e.cap, next)
			}
		}
		runq.dense = runq.dense[:0]
		prev, pos = r, pos+w
		r, w, have = r1, w1, have1
		runq, nextq = nextq, runq
	}
	if matched {
		return pikeMatch, best
	}
	return pikeNoMatch, best
}
