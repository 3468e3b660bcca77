// Command benchchart draws the chart of a scripts/bench.sh run: one panel
// per metric (single-stream and 8-stream throughput, connection rate),
// one bar per target, as an SVG image with no external references.
//
//	go run ./scripts/benchchart [-o chart.svg] results.tsv
//
// results.tsv is what bench.sh writes: "# key: value" lines (date, rounds,
// seconds, host), a header line "target tput1 tput8 connrate", then one
// line per target with its medians (Gb/s, Gb/s, connections/s).
package main

import (
	"bufio"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"html"
	"io"
	"os"
	"strconv"
	"strings"
)

// run is one bench.sh run's medians.
type run struct {
	meta    [][2]string // "# key: value" lines, in order
	targets []string
	values  map[string][3]float64 // target → tput1, tput8, connrate
}

var metrics = [3]struct{ title, unit, format string }{
	{"Throughput, 1 stream", "Gb/s", "%.2f"},
	{"Throughput, 8 streams", "Gb/s", "%.2f"},
	{"New connections per second (Connection: close)", "conn/s", "%.0f"},
}

// parse reads a results file.
func parse(r io.Reader) (*run, error) {
	res := &run{values: map[string][3]float64{}}
	sc := bufio.NewScanner(r)
	header := false
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "":
			continue
		case strings.HasPrefix(line, "#"):
			k, v, ok := strings.Cut(strings.TrimSpace(line[1:]), ":")
			if ok {
				res.meta = append(res.meta, [2]string{strings.TrimSpace(k), strings.TrimSpace(v)})
			}
			continue
		}
		f := strings.Fields(line)
		if !header {
			if strings.Join(f, " ") != "target tput1 tput8 connrate" {
				return nil, fmt.Errorf("line %d: header %q, want \"target tput1 tput8 connrate\"", n, line)
			}
			header = true
			continue
		}
		if len(f) != 4 {
			return nil, fmt.Errorf("line %d: %d fields, want 4", n, len(f))
		}
		var v [3]float64
		for i := range v {
			x, err := strconv.ParseFloat(f[i+1], 64)
			if err != nil || x < 0 {
				return nil, fmt.Errorf("line %d: %s: %q is not a figure", n, f[0], f[i+1])
			}
			v[i] = x
		}
		if _, dup := res.values[f[0]]; dup {
			return nil, fmt.Errorf("line %d: target %s twice", n, f[0])
		}
		res.targets = append(res.targets, f[0])
		res.values[f[0]] = v
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(res.targets) == 0 {
		return nil, errors.New("no targets")
	}
	return res, nil
}

// Layout, in SVG user units.
const (
	width    = 760
	labelW   = 130 // target names
	barMax   = 520 // the longest bar of a panel
	barH     = 16
	barGap   = 6
	panelGap = 34
	top      = 58
)

// highlight is how handoff's own targets are told apart from the others.
func highlight(target string) bool { return target == "kernel" || target == "userspace" }

// draw writes the SVG chart of res.
func draw(w io.Writer, res *run) error {
	var b bytes.Buffer
	panelH := len(res.targets)*(barH+barGap) + panelGap
	height := top + 3*panelH + 20
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n", width, height, width, height)
	fmt.Fprintf(&b, `<rect width="%d" height="%d" fill="#ffffff"/>`+"\n", width, height)
	fmt.Fprintf(&b, `<text x="10" y="22" font-size="16" font-weight="bold">handoff: scripts/bench.sh</text>`+"\n")
	var sub []string
	for _, kv := range res.meta {
		sub = append(sub, kv[0]+" "+kv[1])
	}
	fmt.Fprintf(&b, `<text x="10" y="40" fill="#555555">%s</text>`+"\n", html.EscapeString(strings.Join(sub, " · ")))
	y := top
	for m, met := range metrics {
		max := 0.0
		for _, t := range res.targets {
			max = maxf(max, res.values[t][m])
		}
		fmt.Fprintf(&b, `<text x="10" y="%d" font-weight="bold">%s (%s)</text>`+"\n", y+12, html.EscapeString(met.title), met.unit)
		y += 20
		for _, t := range res.targets {
			v := res.values[t][m]
			bw := 0.0
			if max > 0 {
				bw = v / max * barMax
			}
			fill := "#9aa5b1"
			if highlight(t) {
				fill = "#2f6fb0"
			}
			fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="end">%s</text>`+"\n", labelW-8, y+barH-4, html.EscapeString(t))
			fmt.Fprintf(&b, `<rect class="bar" data-target="%s" data-metric="%d" x="%d" y="%d" width="%.1f" height="%d" fill="%s"/>`+"\n", html.EscapeString(t), m, labelW, y, bw, barH, fill)
			fmt.Fprintf(&b, `<text x="%.1f" y="%d">`+met.format+`</text>`+"\n", float64(labelW)+bw+4, y+barH-4, v)
			y += barH + barGap
		}
		y += panelGap - 20
	}
	b.WriteString("</svg>\n")
	_, err := w.Write(b.Bytes())
	return err
}

func maxf(a, b float64) float64 {
	if a > b {
		return a
	}
	return b
}

func main() {
	out := flag.String("o", "", "write the chart here (default: stdout)")
	flag.Usage = func() {
		fmt.Fprintln(flag.CommandLine.Output(), "usage: benchchart [-o chart.svg] results.tsv")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() != 1 {
		flag.Usage()
		os.Exit(2)
	}
	if err := chart(flag.Arg(0), *out); err != nil {
		fmt.Fprintln(os.Stderr, "benchchart:", err)
		os.Exit(1)
	}
}

// chart reads the results file in and writes its chart to out ("" for stdout).
func chart(in, out string) error {
	f, err := os.Open(in)
	if err != nil {
		return err
	}
	defer f.Close()
	res, err := parse(f)
	if err != nil {
		return fmt.Errorf("%s: %w", in, err)
	}
	if out == "" {
		return draw(os.Stdout, res)
	}
	var b bytes.Buffer
	if err := draw(&b, res); err != nil {
		return err
	}
	return os.WriteFile(out, b.Bytes(), 0o644)
}
