package admin

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"html/template"
	"maps"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/handoff-lb/handoff/balancer"
	"github.com/handoff-lb/handoff/cluster"
	"github.com/handoff-lb/handoff/dataplane"
)

// pageRefresh is how often the status page refreshes itself.
const pageRefresh = 5 * time.Second

// StatusPage returns the handler of the status page: one self-contained
// HTML page (inline CSS and script, no external assets) showing what
// `handoff status` shows, with each service's pins per backend as bars.
//
// The page is rendered on the server, from c.Status, and works without
// script. Its script refreshes it every pageRefresh by fetching the page's
// own URL again (same origin, with cookies) and swapping in the new body:
// a refresh carries exactly the credentials the page was loaded with (the
// admin server's token cookie, set when the page was opened once with
// ?token=), and there is one renderer, here, not a second one in
// JavaScript. When a refresh fails, the page keeps the last data and says
// since when it is stale. Without script, a <noscript> meta refresh
// reloads it.
//
// Every value goes through html/template, and the page is served with a
// Content-Security-Policy that allows only its own script (by hash) and
// same-origin fetches. Authentication is the server's: mount the handler
// behind it (Options.Page).
func StatusPage(c Reader, cl ClusterReader) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
		defer cancel()
		st, err := c.Status(ctx)
		code := http.StatusOK
		if err != nil {
			code, st = http.StatusInternalServerError, balancer.Status{}
		}
		d := newPageData(st, time.Now())
		if err != nil {
			d.Err = err.Error()
		}
		if cl != nil {
			if cs, err := cl.Status(ctx); err == nil {
				d.Cluster = &cs
			}
		}
		var buf bytes.Buffer
		if err := pageTemplate.Execute(&buf, d); err != nil {
			http.Error(w, "rendering the status page: "+err.Error(), http.StatusInternalServerError)
			return
		}
		h := w.Header()
		h.Set("Content-Type", "text/html; charset=utf-8")
		h.Set("Cache-Control", "no-store")
		h.Set("Content-Security-Policy", pageCSP)
		h.Set("X-Content-Type-Options", "nosniff")
		// The URL may hold ?token= for a moment: never send it on.
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Content-Length", strconv.Itoa(buf.Len()))
		w.WriteHeader(code)
		if r.Method != http.MethodHead {
			_, _ = w.Write(buf.Bytes())
		}
	})
}

// pageData is what the template renders.
type pageData struct {
	Err      string // the engine's error; the page shows only it
	Mode     string
	State    balancer.State
	Version  string
	Uptime   float64
	Reloads  []reloadCount // the results that happened
	Updated  time.Time
	Refresh  int // seconds
	Services []pageService
	Script   template.JS
	Cluster  *cluster.Status // nil: not in a cluster

	// Totals over every service.
	Open, Closed, Backends, Up, Down, Draining int
	Pinned, Active                             int64
	Proxied, Forwarded                         uint64

	// Overload: the conntrack table's fill, in percent, when it is near
	// full (else ""), and the health checks not counted because this
	// host could not open connections.
	ConntrackFull string
	Inconclusive  uint64
}

type reloadCount struct {
	N      uint64
	Result string
}

type pageService struct {
	balancer.ServiceStatus
	Up       int
	Backends []pageBackend
	// Full and OverBudget count the new clients whose pin found no room:
	// a full set, a spent pin budget.
	Full, OverBudget uint64
}

type pageBackend struct {
	balancer.BackendStatus
	Share string // of the service's pins, in percent: the bar's width
	Age   string // since the last health transition, "" when unknown
}

func newPageData(st balancer.Status, now time.Time) pageData {
	d := pageData{
		Mode:    st.Mode,
		State:   st.State,
		Version: st.Version,
		Uptime:  st.Uptime,
		Updated: now,
		Refresh: int(pageRefresh.Seconds()),
		Script:  pageScript,
	}
	for _, r := range slices.Sorted(maps.Keys(st.Reloads)) {
		if n := st.Reloads[r]; n > 0 {
			d.Reloads = append(d.Reloads, reloadCount{n, r})
		}
	}
	if c := st.Conntrack; c != nil && c.Fill >= dataplane.ConntrackNearFull {
		d.ConntrackFull = strconv.FormatFloat(100*c.Fill, 'f', 0, 64)
	}
	d.Inconclusive = st.InconclusiveChecks
	for _, s := range st.Services {
		ps := pageService{ServiceStatus: s, Full: s.Classified[balancer.ResultFull], OverBudget: s.Classified[balancer.ResultOverBudget]}
		if s.Open {
			d.Open++
		} else {
			d.Closed++
		}
		for _, b := range s.Backends {
			pb := pageBackend{BackendStatus: b, Share: "0"}
			if s.Pinned > 0 {
				pb.Share = strconv.FormatFloat(math.Min(100, 100*float64(b.Pinned)/float64(s.Pinned)), 'f', 1, 64)
			}
			if !b.Since.IsZero() {
				pb.Age = FormatSeconds(now.Sub(b.Since).Seconds())
			}
			d.Backends++
			if b.Health == "up" {
				ps.Up++
				d.Up++
			} else {
				d.Down++
			}
			if b.Draining {
				d.Draining++
			}
			d.Proxied += b.BytesIn + b.BytesOut
			d.Forwarded += b.ForwardBytes
			ps.Backends = append(ps.Backends, pb)
		}
		d.Pinned += s.Pinned
		d.Active += s.Active
		d.Services = append(d.Services, ps)
	}
	return d
}

// FormatBytes formats a byte count for people, in binary units: "0 B",
// "512 B", "1.5 KiB", "12.0 GiB".
func FormatBytes(n uint64) string {
	if n < 1024 {
		return strconv.FormatUint(n, 10) + " B"
	}
	const units = "KMGTPE"
	v, i := float64(n)/1024, 0
	for v >= 1024 && i < len(units)-1 {
		v /= 1024
		i++
	}
	return fmt.Sprintf("%.1f %ciB", v, units[i])
}

// FormatSeconds formats a duration in seconds for people, in its two
// largest units: "45s", "12m 5s", "4h 12m", "3d 4h". Negative is "0s".
func FormatSeconds(sec float64) string {
	s := int64(math.Max(0, math.Round(sec)))
	parts := []struct {
		n    int64
		unit string
	}{{s / 86400, "d"}, {s / 3600 % 24, "h"}, {s / 60 % 60, "m"}, {s % 60, "s"}}
	for i, p := range parts {
		if p.n == 0 && i < len(parts)-1 {
			continue
		}
		out := strconv.FormatInt(p.n, 10) + p.unit
		if i < len(parts)-1 && parts[i+1].n > 0 {
			out += " " + strconv.FormatInt(parts[i+1].n, 10) + parts[i+1].unit
		}
		return out
	}
	return "0s"
}

// groupDigits writes an integer with narrow-space thousands separators:
// "1 234 567".
func groupDigits(n any) string {
	s := fmt.Sprint(n)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	if neg {
		b.WriteByte('-')
	}
	for i, r := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteString("\u202f")
		}
		b.WriteRune(r)
	}
	return b.String()
}

// pageScript refreshes the page; see StatusPage. It is text/javascript
// written for the template as is, and the CSP allows it by its hash.
const pageScript template.JS = `(function () {
  var every = 1000 * Number(document.body.dataset.refresh || 5);
  var stale = document.getElementById("stale");
  function swap(doc) {
    ["meta", "dash"].forEach(function (id) {
      var fresh = doc.getElementById(id), old = document.getElementById(id);
      if (fresh && old) old.replaceWith(document.importNode(fresh, true));
    });
  }
  function tick() {
    fetch(location.href, {credentials: "same-origin", cache: "no-store", headers: {Accept: "text/html"}})
      .then(function (r) {
        var type = r.headers.get("Content-Type") || "";
        if (type.indexOf("text/html") === 0) return r.text();
        return r.json().then(function (b) { throw new Error(b.error || r.status + " " + r.statusText); },
                             function () { throw new Error(r.status + " " + r.statusText); });
      })
      .then(function (text) {
        swap(new DOMParser().parseFromString(text, "text/html"));
        document.body.classList.remove("is-stale");
        stale.hidden = true;
      })
      .catch(function (e) {
        document.body.classList.add("is-stale");
        stale.hidden = false;
        stale.textContent = "Cannot refresh (" + (e && e.message ? e.message : e) + "). " +
          "Showing the state as of " + document.getElementById("updated").textContent + "; retrying every " + every / 1000 + " s.";
      })
      .finally(function () { setTimeout(tick, every); });
  }
  setTimeout(tick, every);
})();`

// pageCSP allows the page's inline styles and its one script, nothing from
// elsewhere, and fetches to its own origin only.
var pageCSP = func() string {
	sum := sha256.Sum256([]byte(pageScript))
	return "default-src 'none'; style-src 'unsafe-inline'; img-src data:; connect-src 'self'; " +
		"script-src 'sha256-" + base64.StdEncoding.EncodeToString(sum[:]) + "'; " +
		"base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
}()

var pageTemplate = template.Must(template.New("page").Funcs(template.FuncMap{
	"bytes":   FormatBytes,
	"seconds": FormatSeconds,
	"num":     groupDigits,
	"add":     func(a, b uint64) uint64 { return a + b },
	"hhmmss":  func(t time.Time) string { return t.Format("15:04:05") },
	"lagms":   func(s float64) string { return fmt.Sprintf("≤ %g ms", s*1000) },
	"rfc3339": func(t time.Time) string { return t.Format(time.RFC3339) },
}).Parse(pageHTML))

const pageHTML = `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>handoff{{if .Services}} · {{len .Services}} service{{if ne (len .Services) 1}}s{{end}}{{end}}</title>
<link rel="icon" href="data:,">
<noscript><meta http-equiv="refresh" content="{{.Refresh}}"></noscript>
<style>
:root {
  --bg: #f4f6f9; --card: #ffffff; --border: #e2e7ee; --text: #18212d; --muted: #677487;
  --accent: #2563eb; --accent-soft: #dbe7fe; --up: #15803d; --up-soft: #dcfce7;
  --down: #c62828; --down-soft: #fde2e1; --drain: #b45309; --drain-soft: #fef0d7;
  --track: #edf1f6; --mono: ui-monospace, "SF Mono", "Cascadia Mono", Menlo, Consolas, monospace;
}
@media (prefers-color-scheme: dark) {
  :root {
    --bg: #0f141b; --card: #171e27; --border: #263140; --text: #e4e9f0; --muted: #8c99ab;
    --accent: #5b8def; --accent-soft: #1c2a45; --up: #4ade80; --up-soft: #173223;
    --down: #f87171; --down-soft: #3b1c1c; --drain: #fbbf24; --drain-soft: #3a2c12; --track: #222b37;
  }
}
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--text);
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
  font-variant-numeric: tabular-nums; }
.top { display: flex; align-items: center; gap: 16px; padding: 14px 28px; background: var(--card);
  border-bottom: 1px solid var(--border); position: sticky; top: 0; z-index: 1; }
.brand { display: flex; align-items: center; gap: 9px; font-weight: 650; font-size: 17px; letter-spacing: -.01em; }
.brand svg { display: block; }
#meta { display: flex; align-items: center; gap: 14px; color: var(--muted); flex: 1; flex-wrap: wrap; }
#meta b { color: var(--text); font-weight: 600; }
.updated { color: var(--muted); white-space: nowrap; display: flex; align-items: center; gap: 7px; }
.pulse { width: 8px; height: 8px; border-radius: 50%; background: var(--up); box-shadow: 0 0 0 3px var(--up-soft); }
.is-stale .pulse { background: var(--down); box-shadow: 0 0 0 3px var(--down-soft); }
main { max-width: 1320px; margin: 0 auto; padding: 22px 28px 10px; }
.banner { border-radius: 10px; padding: 11px 15px; margin: 0 0 18px; background: var(--down-soft); color: var(--down);
  border: 1px solid color-mix(in srgb, var(--down) 30%, transparent); font-weight: 500; }
#stale { max-width: 1320px; margin: 16px auto 0; padding: 0 28px; }
#stale[hidden] { display: none; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(190px, 1fr)); gap: 14px; margin-bottom: 22px; }
.card { background: var(--card); border: 1px solid var(--border); border-radius: 12px; padding: 14px 16px; }
.card .label { color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: .06em; font-weight: 600; }
.card .value { font-size: 26px; font-weight: 650; margin-top: 2px; letter-spacing: -.02em; }
.card .value small { font-size: 15px; color: var(--muted); font-weight: 500; }
.card .sub { color: var(--muted); font-size: 12.5px; margin-top: 2px; }
.svc { background: var(--card); border: 1px solid var(--border); border-radius: 12px; margin-bottom: 20px; overflow-x: auto; }
.svc > header { display: flex; align-items: baseline; gap: 12px; flex-wrap: wrap; padding: 14px 18px;
  border-bottom: 1px solid var(--border); }
.svc h2 { margin: 0; font-size: 17px; font-weight: 650; letter-spacing: -.01em; }
.svc .facts { display: flex; gap: 16px; color: var(--muted); flex-wrap: wrap; margin-left: auto; }
.svc .facts b { color: var(--text); font-weight: 600; }
code, .mono { font-family: var(--mono); font-size: 12.5px; }
.badge { display: inline-block; font-size: 11.5px; font-weight: 600; padding: 1px 8px; border-radius: 999px;
  letter-spacing: .02em; white-space: nowrap; vertical-align: 1px; }
.b-up, .b-open, .b-kernel { background: var(--up-soft); color: var(--up); }
.b-down { background: var(--down-soft); color: var(--down); }
.unpinned { color: var(--down); }
.b-drain, .b-closed { background: var(--drain-soft); color: var(--drain); }
.b-userspace, .b-api { background: var(--accent-soft); color: var(--accent); }
table { width: 100%; border-collapse: collapse; }
th { text-align: left; font-size: 11.5px; text-transform: uppercase; letter-spacing: .06em; color: var(--muted);
  font-weight: 600; padding: 9px 14px; background: color-mix(in srgb, var(--track) 55%, var(--card)); }
td { padding: 10px 14px; border-top: 1px solid var(--border); vertical-align: middle; }
tr.down td { background: color-mix(in srgb, var(--down-soft) 35%, transparent); }
th.n, td.n { text-align: right; white-space: nowrap; }
td.name { font-weight: 600; white-space: nowrap; }
.health { display: flex; align-items: center; gap: 7px; white-space: nowrap; }
.dot { width: 9px; height: 9px; border-radius: 50%; flex: none; }
.dot.up { background: var(--up); box-shadow: 0 0 0 3px var(--up-soft); }
.dot.down { background: var(--down); box-shadow: 0 0 0 3px var(--down-soft); }
.why { color: var(--muted); font-size: 12px; max-width: 190px; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.pins { min-width: 220px; width: 30%; }
.bar { display: flex; align-items: center; gap: 10px; }
.track { flex: 1; height: 10px; background: var(--track); border-radius: 999px; overflow: hidden; }
.fill { height: 100%; border-radius: 999px; background: var(--accent); min-width: 2px; }
.fill.drain { background: repeating-linear-gradient(135deg, var(--drain) 0 6px, color-mix(in srgb, var(--drain) 70%, transparent) 6px 12px); }
.fill.down { background: var(--down); opacity: .55; }
.fill.zero { min-width: 0; }
.count { min-width: 92px; text-align: right; white-space: nowrap; }
.count .pct { color: var(--muted); font-size: 12px; margin-left: 4px; }
.traffic .sub { color: var(--muted); font-size: 11.5px; white-space: nowrap; }
.empty { color: var(--muted); padding: 16px 18px; }
th:first-child, td:first-child { padding-left: 18px; }
th:last-child, td:last-child { padding-right: 18px; }
footer { max-width: 1320px; margin: 0 auto; padding: 6px 28px 28px; color: var(--muted); font-size: 12.5px; }
footer a { color: inherit; }
</style>
</head>
<body data-refresh="{{.Refresh}}">
<div class="top">
  <div class="brand">
    <svg width="26" height="26" viewBox="0 0 26 26" aria-hidden="true"><rect width="26" height="26" rx="7" fill="#2563eb"/><path d="M7 9h9m0 0-3-3m3 3-3 3M19 17h-9m0 0 3-3m-3 3 3 3" stroke="#fff" stroke-width="2" fill="none" stroke-linecap="round" stroke-linejoin="round"/></svg>
    handoff
  </div>
  <div id="meta">
    {{- if not .Err}}
    <span class="badge b-{{.Mode}}">{{.Mode}} mode</span>
    {{- if and .State (ne .State "serving")}}<span class="badge b-drain">{{.State}}</span>{{end}}
    {{- if .Version}}<span>version <b>{{.Version}}</b></span>{{end}}
    <span>up <b>{{seconds .Uptime}}</b></span>
    {{- with .Reloads}}<span>reloads{{range .}} <b>{{.N}}</b> {{.Result}}{{end}}</span>{{end}}
    {{- end}}
  </div>
  <div class="updated"><span class="pulse"></span>updated&nbsp;<time id="updated" datetime="{{rfc3339 .Updated}}">{{hhmmss .Updated}}</time></div>
</div>
<div id="stale" class="banner" role="status" hidden></div>
<main id="dash">
{{- if .Err}}
  <div class="banner">The engine did not report its status: {{.Err}}</div>
{{- else}}
  {{- if .ConntrackFull}}
  <div class="banner">The conntrack table is {{.ConntrackFull}}% full: new connections may be dropped; from 95% failed health checks are not counted against backends.</div>
  {{- end}}
  {{- if .Inconclusive}}
  <div class="banner">{{num .Inconclusive}} failed health checks were not counted against their backends: this host could not open connections (descriptors, ports, buffers or conntrack exhausted).</div>
  {{- end}}
  <section class="cards">
    <div class="card"><div class="label">Services</div><div class="value">{{len .Services}}</div>
      <div class="sub">{{.Open}} open{{if .Closed}} · {{.Closed}} closed{{end}}</div></div>
    <div class="card"><div class="label">Backends up</div><div class="value">{{.Up}} <small>/ {{.Backends}}</small></div>
      <div class="sub">{{if .Down}}{{.Down}} down{{else}}none down{{end}}{{if .Draining}} · {{.Draining}} draining{{end}}</div></div>
    <div class="card"><div class="label">Pinned clients</div><div class="value">{{num .Pinned}}</div>
      <div class="sub">across every backend</div></div>
    <div class="card"><div class="label">Active connections</div><div class="value">{{num .Active}}</div>
      <div class="sub">proxied now</div></div>
    <div class="card"><div class="label">Traffic</div><div class="value">{{bytes (add .Proxied .Forwarded)}}</div>
      <div class="sub">{{bytes .Proxied}} proxied{{if .Forwarded}} · {{bytes .Forwarded}} in the kernel{{end}}</div></div>
  </section>
  {{- with .Cluster}}
  <section class="svc" id="cluster">
    <header>
      <h2>cluster {{.Name}}</h2>
      <code>node {{.Node}}</code>
      {{if .Etcd.Reachable}}<span class="badge b-open">etcd reachable</span>{{else}}<span class="badge b-closed" title="{{.Etcd.Error}}">etcd unreachable</span>{{end}}
      <div class="facts">
        <span>revision <b>{{.AppliedRevision}}</b></span>
        <span>pending writes <b>{{num .Pending}}</b></span>
        <span>published <b>{{num .Published}}</b></span>
        <span>applied <b>{{num .Applied}}</b></span>
        <span>lag p99 <b>{{lagms .Lag.P99}}</b></span>
      </div>
    </header>
    <table>
      <thead><tr><th>Node</th><th>Version</th><th class="n">Pins</th><th class="n">Pending</th><th class="n">Behind</th><th class="n">Lag p99</th><th>Reported</th></tr></thead>
      <tbody>
      {{- range .Nodes}}
        <tr class="up"><td class="name">{{.Node}}{{if .Self}} <span class="badge b-api">this host</span>{{end}}</td><td>{{.Version}}</td>
          <td class="n">{{num .Pins}}</td><td class="n">{{num .Pending}}</td><td class="n">{{.Behind}}</td><td class="n">{{lagms .LagP99}}</td><td class="mono">{{hhmmss .Updated}}</td></tr>
      {{- end}}
      </tbody>
    </table>
  </section>
  {{- end}}
  {{- range .Services}}
  <section class="svc" id="svc-{{.Name}}">
    <header>
      <h2>{{.Name}}</h2>
      <code>{{.Listen}}</code>
      {{if .Open}}<span class="badge b-open">open</span>{{else}}<span class="badge b-closed">closed</span>{{end}}
      <div class="facts">
        {{- if .Classify}}<span>classify <b>{{.Classify}}</b></span>{{end}}
        <span>backends up <b>{{.Up}}/{{len .Backends}}</b></span>
        <span>pinned <b>{{num .Pinned}}</b></span>
        {{- if .MaxClients}}<span>max <b>{{num .MaxClients}}</b> per backend</span>{{end}}
        <span>active <b>{{num .Active}}</b></span>
        {{- if or .Full .OverBudget}}<span class="unpinned" title="new clients whose pin could not be made, served as on_full says">not pinned: <b>{{num .Full}}</b> set full, <b>{{num .OverBudget}}</b> over budget (on_full: <b>{{.OnFull}}</b>)</span>{{end}}
        {{- if .Migrations}}<span>migrations <b>{{.Migrations}}</b> ({{num .MigratedClients}} clients)</span>{{end}}
        {{- with .FirstConnections}}<span>first connections: in-kernel <b>{{index . "in-kernel"}}</b>, transparent <b>{{index . "transparent"}}</b>, proxied <b>{{index . "proxied"}}</b>, reset <b>{{index . "reset"}}</b></span>{{end}}
      </div>
    </header>
    {{- if .Backends}}
    <table>
      <thead><tr><th>Backend</th><th>Address</th><th>Pool</th><th>Health</th><th class="pins">Pinned clients</th>
        <th class="n">Active</th><th class="n">Connections</th><th class="n">Traffic</th></tr></thead>
      <tbody>
      {{- range .Backends}}
        <tr class="{{.Health}}">
          <td class="name">{{.Name}}{{if .Registered}} <span class="badge b-api" title="registered through the API{{if .ExpiresIn}}; expires in {{seconds .ExpiresIn}} unless renewed{{end}}">API</span>{{end}}</td>
          <td class="mono">{{.Address}}</td>
          <td>{{.Pool}}</td>
          <td><div class="health"><span class="dot {{.Health}}"></span><span class="badge b-{{.Health}}">{{.Health}}</span>
            {{- if .Draining}} <span class="badge b-drain">draining</span>{{end}}</div>
            {{- if .Age}}<div class="why">for {{.Age}}</div>{{end}}
            {{- if and .Reason (eq .Health "down")}}<div class="why" title="{{.Reason}}">{{.Reason}}</div>{{end}}</td>
          <td class="pins"><div class="bar"><div class="track"><div class="fill{{if eq .Health "down"}} down{{else if .Draining}} drain{{end}}{{if not .Pinned}} zero{{end}}" style="width: {{.Share}}%"></div></div>
            <span class="count">{{num .Pinned}}<span class="pct">{{.Share}}%</span></span></div></td>
          <td class="n">{{num .Active}}</td>
          <td class="n">{{num .Connections}}</td>
          <td class="n traffic">{{bytes (add (add .BytesIn .BytesOut) .ForwardBytes)}}
            <div class="sub" title="proxied: client to backend ↑, backend to client ↓">↑ {{bytes .BytesIn}} ↓ {{bytes .BytesOut}}</div>
            {{- if .ForwardBytes}}<div class="sub" title="forwarded in the kernel, both ways (its entry's counter in the service's counting set, which sees every packet)">kernel {{bytes .ForwardBytes}}</div>{{end}}</td>
        </tr>
      {{- end}}
      </tbody>
    </table>
    {{- else}}
    <div class="empty">No backends.</div>
    {{- end}}
  </section>
  {{- else}}
  <div class="card empty">{{if eq .State "starting"}}Starting: the services are opening their listeners.{{else}}No services are configured.{{end}}</div>
  {{- end}}
{{- end}}
</main>
<footer>Refreshes every {{.Refresh}} s · the same data as <code>handoff status</code> and <a href="api/v1/status">/api/v1/status</a> · metrics at <a href="metrics">/metrics</a></footer>
<script>{{.Script}}</script>
</body>
</html>
`
