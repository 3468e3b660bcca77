package main

import (
	"bytes"
	"encoding/xml"
	"os"
	"strconv"
	"strings"
	"testing"
)

// bars returns the width of each bar of an SVG chart, by target and metric.
func bars(t *testing.T, svg []byte) map[[2]string]float64 {
	t.Helper()
	out := map[[2]string]float64{}
	d := xml.NewDecoder(bytes.NewReader(svg))
	for {
		tok, err := d.Token()
		if err != nil {
			break
		}
		se, ok := tok.(xml.StartElement)
		if !ok || se.Name.Local != "rect" {
			continue
		}
		var target, metric, width, class string
		for _, a := range se.Attr {
			switch a.Name.Local {
			case "data-target":
				target = a.Value
			case "data-metric":
				metric = a.Value
			case "width":
				width = a.Value
			case "class":
				class = a.Value
			}
		}
		if class != "bar" {
			continue
		}
		w, err := strconv.ParseFloat(width, 64)
		if err != nil {
			t.Fatalf("bar %s/%s: width %q", target, metric, width)
		}
		out[[2]string{target, metric}] = w
	}
	return out
}

// TestDraw: each bar's length is its figure over the panel's largest, the
// largest filling the panel, and the chart is well-formed XML.
func TestDraw(t *testing.T) {
	in := "# date: 2026-12-05\n# rounds: 3\ntarget tput1 tput8 connrate\ndirect 16 40 20000\nkernel 8 40 10000\nhaproxy 4 10 5000\n"
	res, err := parse(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if err := draw(&b, res); err != nil {
		t.Fatal(err)
	}
	got := bars(t, b.Bytes())
	want := map[[2]string]float64{
		{"direct", "0"}: barMax, {"kernel", "0"}: barMax / 2, {"haproxy", "0"}: barMax / 4,
		{"direct", "1"}: barMax, {"kernel", "1"}: barMax, {"haproxy", "1"}: barMax / 4,
		{"direct", "2"}: barMax, {"kernel", "2"}: barMax / 2, {"haproxy", "2"}: barMax / 4,
	}
	if len(got) != len(want) {
		t.Fatalf("%d bars, want %d:\n%s", len(got), len(want), b.String())
	}
	for k, w := range want {
		if g, ok := got[k]; !ok || g < w-0.1 || g > w+0.1 {
			t.Errorf("bar %s metric %s: width %v, want %v", k[0], k[1], g, w)
		}
	}
	if !strings.Contains(b.String(), "date 2026-12-05 · rounds 3") {
		t.Errorf("the chart does not say which run it shows:\n%s", b.String())
	}
}

// TestParseRefuses: a results file that is not bench.sh's is an error.
func TestParseRefuses(t *testing.T) {
	for _, in := range []string{
		"",
		"target tput1 tput8\ndirect 1 2\n",
		"target tput1 tput8 connrate\ndirect 1 2\n",
		"target tput1 tput8 connrate\ndirect 1 two 3\n",
		"target tput1 tput8 connrate\ndirect 1 2 -3\n",
		"target tput1 tput8 connrate\ndirect 1 2 3\ndirect 1 2 3\n",
	} {
		if _, err := parse(strings.NewReader(in)); err == nil {
			t.Errorf("parse(%q) accepted it", in)
		}
	}
}

// TestLatestChartIsCurrent: the chart in docs/benchmarks is the one this
// program draws from the results next to it (bench.sh writes both; a
// results file edited by hand, or a chart left behind, fails here).
func TestLatestChartIsCurrent(t *testing.T) {
	f, err := os.Open("../../docs/benchmarks/latest.tsv")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	res, err := parse(f)
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if err := draw(&b, res); err != nil {
		t.Fatal(err)
	}
	svg, err := os.ReadFile("../../docs/benchmarks/latest.svg")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(svg, b.Bytes()) {
		t.Error("docs/benchmarks/latest.svg is not the chart of latest.tsv; run go run ./scripts/benchchart -o docs/benchmarks/latest.svg docs/benchmarks/latest.tsv")
	}
}
