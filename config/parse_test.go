package config

import (
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"
)

func init() {
	RegisterClassify("station-id") // as the classifier package would
}

// svc is a valid config with one service "web" on 198.18.1.1:80; extra is
// appended to the service, so its first line is line 4 and its keys are at
// column 5.
func svc(extra string) string {
	return "services:\n  - name: web\n    listen: 198.18.1.1:80\n" + extra
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		desc string
		yaml string
		pos  string // LINE:COL of the first error
		msg  string // substring of its message
		n    int    // number of errors; 0 means 1
	}{
		// Documents and YAML.
		{desc: "empty file", yaml: "", pos: "1:1", msg: "the config is empty"},
		{desc: "comments only", yaml: "# nothing here\n", pos: "1:1", msg: "the config is empty"},
		{desc: "top level is a list", yaml: "- services\n", pos: "1:1", msg: "expected a mapping, found a list"},
		{desc: "top level is a scalar", yaml: "hello\n", pos: "1:1", msg: `expected a mapping, found the string "hello"`},
		{desc: "syntax error: unclosed flow list", yaml: svc("    pools: [\n"), pos: "4:1", msg: "invalid YAML: did not find expected node content"},
		{desc: "syntax error: bad indentation", yaml: "services:\n  - name: web\n   listen: 198.18.1.1:80\n", pos: "3:1", msg: "invalid YAML"},
		{desc: "syntax error: tab indentation", yaml: "services:\n  - name: web\n\tlisten: 198.18.1.1:80\n", pos: "3:1", msg: "tab character"},
		{desc: "syntax error on line 1", yaml: "mode: auto: kernel\n", pos: "1:1", msg: "mapping values are not allowed"},
		{desc: "syntax error: unterminated quote", yaml: "mode: auto\nservices:\n  - name: \"web\n", pos: "3:1", msg: "invalid YAML"},
		{desc: "control character", yaml: "mode: auto\nstate_dir: /x\x01\n", pos: "2:14", msg: "control characters"},
		{desc: "invalid UTF-8", yaml: "mode: auto\n  # \xff\n", pos: "2:5", msg: "invalid YAML"},
		{desc: "unknown anchor", yaml: "services:\n  - name: *web\n", pos: "2:11", msg: "unknown anchor 'web'"},
		{desc: "alias cycle", yaml: "x: &a [*a]\n", pos: "1:8", msg: "alias *a refers to a node that contains it"},
		{desc: "alias expansion bomb", yaml: "x-a: &a [x, x, x, x, x, x, x, x, x, x]\nx-b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\nx-c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nx-d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\nx-e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\n" + svc(""), pos: "1:1", msg: "aliases expand the document from 68 to 135808 nodes, more than the 10680 allowed"},
		{desc: "bad aliased value reported where it is used", yaml: "x-ttl: &ttl 1.5s\n" + svc("    client_ttl: *ttl\n"), pos: "5:17", msg: "client_ttl: 1.5s is not whole seconds"},
		{desc: "merge of a scalar", yaml: svc("    backends:\n      - {<<: 5, name: be1, address: 198.19.1.1:80}\n"), pos: "5:14", msg: "<<: expected a mapping or a list of mappings to merge, found the number 5"},
		{desc: "second document", yaml: svc("---\nmode: kernel\n"), pos: "5:1", msg: "a second YAML document"},
		{desc: "second document after an empty one", yaml: svc("---\n---\n# x\n---\nmode: kernel\n"), pos: "8:1", msg: "a second YAML document"},

		// Keys.
		{desc: "unknown top-level key with a suggestion", yaml: svc("modee: auto\n"), pos: "4:1", msg: `unknown key "modee"; did you mean "mode"?`},
		{desc: "service key at the top level", yaml: svc("listen: 198.18.1.2:80\n"), pos: "4:1", msg: `unknown key "listen"; did you mean "services[].listen"?`},
		{desc: "duplicate top-level key", yaml: "mode: auto\n" + svc("mode: kernel\n"), pos: "5:1", msg: `duplicate key "mode" (first at line 1)`},
		{desc: "non-string key", yaml: svc("? [a, b]\n: c\n"), pos: "4:3", msg: "keys must be strings, found a list"},
		{desc: "unknown service key with a suggestion", yaml: svc("    listn: x\n"), pos: "4:5", msg: `service "web": unknown key "listn"; did you mean "listen"?`},
		{desc: "unknown service key, wrong case", yaml: svc("    Classify: source\n"), pos: "4:5", msg: `did you mean "classify"?`},
		{desc: "health key on the service", yaml: svc("    interval: 5s\n"), pos: "4:5", msg: `unknown key "interval"; did you mean "health.interval"?`},
		{desc: "duplicate service key", yaml: svc("    listen: 198.18.1.2:80\n"), pos: "4:5", msg: `service "web": duplicate key "listen" (first at line 3)`},
		{desc: "unknown key in a small mapping lists the valid ones", yaml: svc("    timeouts: {dial: 1s}\n"), pos: "4:16", msg: `timeouts: unknown key "dial"; valid keys: connect, idle`},
		{desc: "unknown health key", yaml: svc("    health: {intervall: 1s}\n"), pos: "4:14", msg: `service "web": health: unknown key "intervall"; did you mean "interval"?`},
		{desc: "unknown backend key", yaml: svc("    backends:\n      - {name: be1, address: 198.19.1.1:80, weigth: 2}\n"), pos: "5:45", msg: `service "web": backend "be1": unknown key "weigth"; did you mean "weight"?`},
		{desc: "route condition outside match", yaml: svc("    routes:\n      - {cidr: 198.18.0.0/15, pool: default}\n"), pos: "5:10", msg: `unknown key "cidr"; did you mean "match.cidr"?`, n: 2},

		// Kinds.
		{desc: "services is a mapping", yaml: "services: {name: web}\n", pos: "1:11", msg: "services: expected a list, found a mapping"},
		{desc: "service is a string", yaml: "services:\n  - web\n", pos: "2:5", msg: `services[0]: expected a mapping, found the string "web"`},
		{desc: "service is null", yaml: "services:\n  -\n  - name: web\n    listen: 198.18.1.1:80\n", pos: "2:4", msg: "services[0]: expected a service, found nothing"},
		{desc: "health is a list", yaml: svc("    health: [tcp]\n"), pos: "4:13", msg: `service "web": health: expected a mapping, found a list`},
		{desc: "listen is a list", yaml: "services:\n  - name: web\n    listen: [198.18.1.1:80]\n", pos: "3:13", msg: "listen: expected a single value, found a list"},
		{desc: "routes is a mapping", yaml: svc("    routes: {match: {key: a}, pool: default}\n"), pos: "4:13", msg: "routes: expected a list, found a mapping"},
		{desc: "weight is a string", yaml: svc("    backends: [{name: be1, address: 198.19.1.1:80, weight: \"2\"}]\n"), pos: "4:60", msg: `weight: expected an integer, found the string "2"`},
		{desc: "weight is a float", yaml: svc("    backends: [{name: be1, address: 198.19.1.1:80, weight: 1.5}]\n"), pos: "4:60", msg: "weight: expected an integer, found the number 1.5"},

		// Top level.
		{desc: "no services", yaml: "mode: auto\n", pos: "1:1", msg: "services: required; a config needs at least one service"},
		{desc: "services null", yaml: "services:\n", pos: "1:1", msg: "services: required"},
		{desc: "services empty", yaml: "services: []\n", pos: "1:11", msg: "services: empty"},
		{desc: "bad mode", yaml: "mode: fast\n" + svc(""), pos: "1:7", msg: `mode: "fast" is not one of auto, kernel, userspace`},
		{desc: "bad mode with a suggestion", yaml: "mode: kernal\n" + svc(""), pos: "1:7", msg: `did you mean "kernel"?`},
		{desc: "bad log level", yaml: "log: {level: loud}\n" + svc(""), pos: "1:14", msg: `log.level: "loud" is not one of trace, debug, info, warn, error`},
		{desc: "bad log format", yaml: "log: {format: xml}\n" + svc(""), pos: "1:15", msg: `log.format: "xml" is not one of text, json`},
		{desc: "bad summary interval", yaml: "log: {summary_interval: 5}\n" + svc(""), pos: "1:25", msg: `log.summary_interval: "5" is not a duration`},
		{desc: "negative summary interval", yaml: "log: {summary_interval: -5s}\n" + svc(""), pos: "1:25", msg: "log.summary_interval: -5s is negative"},
		{desc: "admin on every address without token", yaml: "admin: {listen: \":9900\"}\n" + svc(""), pos: "1:17", msg: `admin.listen: ":9900" is not a loopback address, so admin.token_file is required`},
		{desc: "admin on a public address without token", yaml: "admin: {listen: \"198.18.0.1:9900\"}\n" + svc(""), pos: "1:17", msg: "admin.token_file is required"},
		{desc: "admin on a host name without token", yaml: "admin: {listen: \"admin.example:9900\"}\n" + svc(""), pos: "1:17", msg: "admin.token_file is required"},
		{desc: "admin without port", yaml: "admin: {listen: 127.0.0.1}\n" + svc(""), pos: "1:17", msg: `admin.listen: "127.0.0.1" is not host:port`},
		{desc: "admin port 0", yaml: "admin: {listen: \"127.0.0.1:0\"}\n" + svc(""), pos: "1:17", msg: `port "0" is not a number 1..65535`},
		{desc: "admin pprof not a boolean", yaml: "admin: {pprof: maybe}\n" + svc(""), pos: "1:16", msg: `admin.pprof: expected true or false, found the string "maybe"`},
		{desc: "relative state_dir", yaml: "state_dir: var/lib\n" + svc(""), pos: "1:12", msg: `state_dir: "var/lib" is not an absolute path`},
		{desc: "service listen is the admin address", yaml: "services:\n  - name: web\n    listen: 127.0.0.1:9900\n", pos: "3:13", msg: "127.0.0.1:9900 conflicts with admin.listen 127.0.0.1:9900"},

		// Service name and listen.
		{desc: "missing name", yaml: "services:\n  - listen: 198.18.1.1:80\n", pos: "2:5", msg: "services[0]: name: required"},
		{desc: "null name", yaml: "services:\n  - name:\n    listen: 198.18.1.1:80\n", pos: "2:5", msg: "services[0]: name: required"},
		{desc: "upper-case name", yaml: "services:\n  - name: Web\n    listen: 198.18.1.1:80\n", pos: "2:11", msg: `service "Web": name: "Web" is not a valid service name`},
		{desc: "name of 13 characters", yaml: "services:\n  - name: abcdefghijklm\n    listen: 198.18.1.1:80\n", pos: "2:11", msg: "is not a valid service name"},
		{desc: "name starting with -", yaml: "services:\n  - name: -web\n    listen: 198.18.1.1:80\n", pos: "2:11", msg: "is not a valid service name"},
		{desc: "name with _", yaml: "services:\n  - name: my_web\n    listen: 198.18.1.1:80\n", pos: "2:11", msg: "is not a valid service name"},
		{desc: "duplicate service name", yaml: svc("  - name: web\n    listen: 198.18.1.2:80\n"), pos: "4:11", msg: `service "web": name: duplicate; service names are unique (first at line 2)`},
		{desc: "missing listen", yaml: "services:\n  - name: web\n", pos: "2:5", msg: `service "web": listen: required`},
		{desc: "listen without port", yaml: "services:\n  - name: web\n    listen: 198.18.1.1\n", pos: "3:13", msg: `listen: "198.18.1.1" has no port; write 198.18.1.1:PORT`},
		{desc: "listen IPv6 without brackets", yaml: "services:\n  - name: web\n    listen: \"2001:2::1\"\n", pos: "3:13", msg: "write IPv6 as [2001:2::1]:PORT"},
		{desc: "listen port 0", yaml: "services:\n  - name: web\n    listen: 198.18.1.1:0\n", pos: "3:13", msg: "port 0; a port 1..65535 is required"},
		{desc: "listen port too big", yaml: "services:\n  - name: web\n    listen: 198.18.1.1:65536\n", pos: "3:13", msg: `port "65536" is not a number 1..65535`},
		{desc: "listen host name", yaml: "services:\n  - name: web\n    listen: web.example:80\n", pos: "3:13", msg: `"web.example" is not an IP address (host names are not resolved)`},
		{desc: "listen without address", yaml: "services:\n  - name: web\n    listen: \":80\"\n", pos: "3:13", msg: "write 0.0.0.0:80 or [::]:80"},
		{desc: "listen IPv4-mapped IPv6", yaml: "services:\n  - name: web\n    listen: \"[::ffff:198.18.1.1]:80\"\n", pos: "3:13", msg: "IPv4-mapped IPv6 address; write 198.18.1.1:80"},
		{desc: "listen with zone", yaml: "services:\n  - name: web\n    listen: \"[fe80::1%eth0]:80\"\n", pos: "3:13", msg: "zones are not supported"},
		{desc: "listen not an address", yaml: "services:\n  - name: web\n    listen: everywhere\n", pos: "3:13", msg: `"everywhere" is not ip:port`},
		{desc: "duplicate listen", yaml: svc("  - name: web2\n    listen: 198.18.1.1:80\n"), pos: "5:13", msg: `service "web2": listen: 198.18.1.1:80 conflicts with the listen address 198.18.1.1:80 of service "web" (line 3)`},
		{desc: "unspecified listen on a used port", yaml: svc("  - name: web2\n    listen: 0.0.0.0:80\n"), pos: "5:13", msg: `0.0.0.0:80 conflicts with the listen address 198.18.1.1:80 of service "web"`},
		{desc: "IPv6 unspecified and specific", yaml: "services:\n  - name: a\n    listen: \"[::]:443\"\n  - name: b\n    listen: \"[2001:2::1]:443\"\n", pos: "5:13", msg: "conflicts with the listen address [::]:443"},

		// Service scalars.
		{desc: "bad first_connection", yaml: svc("    first_connection: drop\n"), pos: "4:23", msg: `first_connection: "drop" is not one of proxy, reset`},
		{desc: "client_ttl fraction of a second", yaml: svc("    client_ttl: 1.5s\n"), pos: "4:17", msg: "client_ttl: 1.5s is not whole seconds"},
		{desc: "client_ttl above ipset's maximum", yaml: svc("    client_ttl: 600h\n"), pos: "4:17", msg: "client_ttl: 600h is more than 596h31m23s (2147483s, ipset's largest timeout)"},
		{desc: "client_ttl negative", yaml: svc("    client_ttl: -1m\n"), pos: "4:17", msg: "client_ttl: -1m is negative"},
		{desc: "client_ttl without unit", yaml: svc("    client_ttl: 30\n"), pos: "4:17", msg: `client_ttl: "30" is not a duration; write a Go duration like 500ms, 30s, 5m or 1h30m`},
		{desc: "snat not a boolean", yaml: svc("    snat: sometimes\n"), pos: "4:11", msg: "snat: expected true or false"},
		{desc: "max_clients 0", yaml: svc("    max_clients: 0\n"), pos: "4:18", msg: "max_clients: 0 is out of range 1..2147483647"},
		{desc: "max_clients above 2^31-1", yaml: svc("    max_clients: 2147483648\n"), pos: "4:18", msg: "max_clients: 2147483648 is out of range 1..2147483647"},
		{desc: "max_clients overflows", yaml: svc("    max_clients: 99999999999999999999\n"), pos: "4:18", msg: "is out of range"},
		{desc: "max_connections 0", yaml: svc("    max_connections: 0\n"), pos: "4:22", msg: "max_connections: 0 is out of range 1..2147483647"},
		{desc: "max_connections negative", yaml: svc("    max_connections: -5\n"), pos: "4:22", msg: "max_connections: -5 is out of range"},
		{desc: "bad classify lists the valid ones", yaml: svc("    classify: cookie\n"), pos: "4:15", msg: `classify: "cookie" is not one of source, payload, sni, http-host, station-id`},
		{desc: "bad on_unclassified", yaml: svc("    on_unclassified: drop\n"), pos: "4:22", msg: `on_unclassified: "drop" is not one of default, reject`},
		{desc: "bad on_backend_down", yaml: svc("    on_backend_down: migrate\n"), pos: "4:22", msg: `on_backend_down: "migrate" is not one of rehash, reclassify`},
		{desc: "timeouts.connect 0", yaml: svc("    timeouts: {connect: 0s}\n"), pos: "4:25", msg: "timeouts.connect: must be more than 0"},
		{desc: "timeouts.idle negative", yaml: svc("    timeouts: {idle: -1s}\n"), pos: "4:22", msg: "timeouts.idle: -1s is negative"},
		{desc: "timeouts.idle overflowing", yaml: svc("    timeouts: {idle: 2500000h}\n"), pos: "4:22", msg: "timeouts.idle: 2500000h is too long: at most 876000h0m0s (100 years)"},
		{desc: "health.interval overflowing", yaml: svc("    health: {interval: 2400000h}\n"), pos: "4:24", msg: "health.interval: 2400000h is too long"},
		{desc: "proxy_protocol as YAML boolean", yaml: "mode: userspace\n" + svc("    proxy_protocol: false\n"), pos: "5:21", msg: `proxy_protocol: "false" is not one of off, v1, v2`},
		{desc: "proxy_protocol v3", yaml: "mode: userspace\n" + svc("    proxy_protocol: v3\n"), pos: "5:21", msg: `proxy_protocol: "v3" is not one of off, v1, v2`},
		{desc: "proxy_protocol in kernel mode", yaml: "mode: kernel\n" + svc("    proxy_protocol: v2\n"), pos: "5:21", msg: "proxy_protocol: v2 needs userspace mode; connections forwarded in the kernel carry no PROXY header (mode is kernel)"},
		{desc: "admin on a relative unix socket", yaml: "admin: {listen: \"unix:admin.sock\"}\n" + svc(""), pos: "1:17", msg: `admin.listen: "unix:admin.sock": the socket path "admin.sock" is not absolute`},
		{desc: "metrics without a port", yaml: "metrics: {listen: \"198.18.0.1\"}\n" + svc(""), pos: "1:19", msg: `metrics.listen: "198.18.0.1" is not host:port`},
		{desc: "metrics on the admin address", yaml: "metrics: {listen: \"127.0.0.1:9900\"}\n" + svc(""), pos: "1:19", msg: `metrics.listen: "127.0.0.1:9900" conflicts with admin.listen`},
		{desc: "service on the metrics address", yaml: "metrics: {listen: \"0.0.0.0:80\"}\n" + svc(""), pos: "4:13", msg: `service "web": listen: 198.18.1.1:80 conflicts with metrics.listen 0.0.0.0:80`},
		{desc: "log.access not a boolean", yaml: "log: {access: sometimes}\n" + svc(""), pos: "1:15", msg: `log.access: expected true or false`},

		// Payload.
		{desc: "classify payload without pattern", yaml: svc("    classify: payload\n"), pos: "4:15", msg: "payload.pattern: required when classify is payload"},
		{desc: "classify payload, payload without pattern", yaml: svc("    classify: payload\n    payload: {max_bytes: 64}\n"), pos: "5:5", msg: "payload.pattern: required when classify is payload"},
		{desc: "empty pattern", yaml: svc("    classify: payload\n    payload: {pattern: \"\"}\n"), pos: "5:24", msg: "payload.pattern: must not be empty"},
		{desc: "bad pattern with classify sni", yaml: svc("    classify: sni\n    payload: {pattern: '('}\n"), pos: "5:24", msg: "payload.pattern: invalid regexp"},
		{desc: "pattern does not compile", yaml: svc("    classify: payload\n    payload: {pattern: 'a(b'}\n"), pos: "5:24", msg: "payload.pattern: invalid regexp: missing closing ): `a(b`"},
		{desc: "pattern is not RE2", yaml: svc("    classify: payload\n    payload: {pattern: '(?<=x)y'}\n"), pos: "5:24", msg: "payload.pattern: invalid regexp"},
		{desc: "payload max_bytes 0", yaml: svc("    classify: sni\n    payload: {max_bytes: 0}\n"), pos: "5:26", msg: "payload.max_bytes: 0 is out of range 1..1048576"},
		{desc: "payload timeout 0", yaml: svc("    classify: sni\n    payload: {timeout: 0}\n"), pos: "5:24", msg: "payload.timeout: must be more than 0"},

		// Health.
		{desc: "bad health check", yaml: svc("    health: {check: icmp}\n"), pos: "4:21", msg: `health.check: "icmp" is not one of tcp, http, send-expect, none`},
		{desc: "health interval 0", yaml: svc("    health: {interval: 0s}\n"), pos: "4:24", msg: "health.interval: must be more than 0"},
		{desc: "health timeout longer than interval", yaml: svc("    health: {interval: 2s, timeout: 3s}\n"), pos: "4:37", msg: "health.timeout: 3s is longer than health.interval 2s"},
		{desc: "health interval shorter than the default timeout", yaml: svc("    health: {interval: 500ms}\n"), pos: "4:24", msg: "health.interval: 500ms is shorter than health.timeout 1s (default)"},
		{desc: "health rise 0", yaml: svc("    health: {rise: 0}\n"), pos: "4:20", msg: "health.rise: 0 is out of range 1..2147483647"},
		{desc: "health fall 0", yaml: svc("    health: {fall: 0}\n"), pos: "4:20", msg: "health.fall: 0 is out of range"},
		{desc: "health http path without /", yaml: svc("    health: {check: http, http: {path: healthz}}\n"), pos: "4:40", msg: `health.http.path: "healthz" does not start with /`},
		{desc: "health http path with a space", yaml: svc("    health: {check: http, http: {path: \"/a b\"}}\n"), pos: "4:40", msg: `health.http.path: "/a b" holds a space, tab or line break`},
		{desc: "health http status 600", yaml: svc("    health: {check: http, http: {expect_status: 600}}\n"), pos: "4:49", msg: "health.http.expect_status: 600 is out of range 100..599"},
		{desc: "send-expect without expect", yaml: svc("    health: {check: send-expect, send: \"PING\\r\\n\"}\n"), pos: "4:13", msg: "health.expect: required when check is send-expect"},
		{desc: "send-expect with empty expect", yaml: svc("    health: {check: send-expect, expect: \"\"}\n"), pos: "4:34", msg: "health.expect: required when check is send-expect"},

		// Pools and backends.
		{desc: "pools and shorthand", yaml: svc("    balance: maglev\n    pools: [{name: default}]\n"), pos: "4:5", msg: `service "web": balance: the shorthand balance/backends/failback cannot be combined with pools`},
		{desc: "pools empty", yaml: svc("    pools: []\n"), pos: "4:5", msg: "pools: at least one pool is required"},
		{desc: "pools null", yaml: svc("    pools:\n"), pos: "4:5", msg: "pools: at least one pool is required"},
		{desc: "pool without name", yaml: svc("    pools:\n      - balance: maglev\n"), pos: "5:9", msg: `service "web": pools[0]: name: required`, n: 2},
		{desc: "pool with a bad name", yaml: svc("    on_unclassified: reject\n    pools:\n      - name: Vip\n"), pos: "6:15", msg: `service "web": pool "Vip": name: "Vip" is not a valid pool name`},
		{desc: "duplicate pool", yaml: svc("    pools:\n      - name: default\n      - name: default\n"), pos: "6:15", msg: `pool "default": name: duplicate; pool names are unique within a service (first at line 5)`},
		{desc: "bad balance with a suggestion", yaml: svc("    balance: round_robin\n"), pos: "4:14", msg: `balance: "round_robin" is not one of maglev, source-hash, round-robin, random, hot-standby, least-conn; did you mean "round-robin"?`},
		{desc: "bad failback", yaml: svc("    pools:\n      - {name: default, failback: sometimes}\n"), pos: "5:35", msg: `pool "default": failback: "sometimes" is not one of rehash, keep (or true, false)`},
		{desc: "failback typo", yaml: svc("    pools:\n      - {name: default, failback: rehas}\n"), pos: "5:35", msg: `did you mean "rehash"?`},
		{desc: "loopback backend in auto mode", yaml: svc("    backends: [{name: a, address: 127.0.0.1:80}]\n"), pos: "4:35", msg: `address: 127.0.0.1:80 is a loopback address: the kernel data plane cannot forward to it`},
		{desc: "loopback backend in kernel mode", yaml: "mode: kernel\nservices:\n  - name: web\n    listen: \"[2001:2::1]:80\"\n    backends: [{name: a, address: \"[::1]:80\"}]\n", pos: "5:35", msg: `is a loopback address`},
		{desc: "link-local backend", yaml: svc("    backends: [{name: a, address: 169.254.1.1:80}]\n"), pos: "4:35", msg: `169.254.1.1:80 is a link-local address`},
		{desc: "multicast backend", yaml: svc("    backends: [{name: a, address: 224.0.0.5:80}]\n"), pos: "4:35", msg: `is a multicast address`},
		{desc: "broadcast backend", yaml: svc("    backends: [{name: a, address: 255.255.255.255:80}]\n"), pos: "4:35", msg: `is the broadcast address`},
		{desc: "backend on the VIP", yaml: svc("    backends: [{name: a, address: 198.18.1.1:8080}]\n"), pos: "4:35", msg: `is the service's own address (the VIP)`},
		{desc: "bad on_full", yaml: svc("    on_full: drop\n"), pos: "4:14", msg: `on_full: "drop" is not one of proxy, reject`},
		{desc: "pin_budget not a mapping", yaml: svc("    pin_budget: 5\n"), pos: "4:17", msg: `pin_budget`},
		{desc: "pin_budget unknown key", yaml: svc("    pin_budget: {per_prefx: 5}\n"), pos: "4:18", msg: `per_prefix`},
		{desc: "negative per_prefix", yaml: svc("    pin_budget: {per_prefix: -1}\n"), pos: "4:30", msg: `pin_budget.per_prefix: -1 is out of range 0..`},
		{desc: "ipv4_prefix too long", yaml: svc("    pin_budget: {ipv4_prefix: 33}\n"), pos: "4:31", msg: `pin_budget.ipv4_prefix: 33 is out of range 1..32`},
		{desc: "ipv6_pin_prefix too long", yaml: svc("    ipv6_pin_prefix: 129\n"), pos: "4:22", msg: `ipv6_pin_prefix: 129 is out of range 0..128`},
		{desc: "ipv6_pin_prefix not a number", yaml: svc("    ipv6_pin_prefix: /64\n"), pos: "4:22", msg: `ipv6_pin_prefix`},
		{desc: "ipv6_prefix zero", yaml: svc("    pin_budget: {ipv6_prefix: 0}\n"), pos: "4:31", msg: `pin_budget.ipv6_prefix: 0 is out of range 1..128`},
		{desc: "no default pool", yaml: svc("    pools:\n      - name: vip\n"), pos: "4:5", msg: `service "web": on_unclassified: default sends clients no route matches to the pool named "default", and there is none; add that pool or set on_unclassified: reject`},
		{desc: "explicit on_unclassified default without default pool", yaml: svc("    on_unclassified: default\n    pools: [{name: vip}]\n"), pos: "4:22", msg: `to the pool named "default", and there is none`},
		{desc: "backend without address", yaml: svc("    backends: [{name: be1}]\n"), pos: "4:16", msg: `service "web": backend "be1": address: required`},
		{desc: "backend without name", yaml: svc("    backends: [{address: 198.19.1.1:80}]\n"), pos: "4:16", msg: `service "web": backends[0]: name: required`},
		{desc: "backend in a pool without name", yaml: svc("    pools:\n      - name: default\n        backends: [{address: 198.19.1.1:80}]\n"), pos: "6:20", msg: `service "web": pool "default": backends[0]: name: required`},
		{desc: "backend with a bad name", yaml: svc("    backends: [{name: be.1, address: 198.19.1.1:80}]\n"), pos: "4:23", msg: `backend "be.1": name: "be.1" is not a valid backend name`},
		{desc: "backend address without port", yaml: svc("    backends: [{name: be1, address: 198.19.1.1}]\n"), pos: "4:37", msg: `service "web": backend "be1": address: "198.19.1.1" has no port`},
		{desc: "backend address unspecified", yaml: svc("    backends: [{name: be1, address: 0.0.0.0:80}]\n"), pos: "4:37", msg: "a backend needs a specific address, not 0.0.0.0"},
		{desc: "backend address port 0", yaml: svc("    backends: [{name: be1, address: 198.19.1.1:0}]\n"), pos: "4:37", msg: "port 0"},
		{desc: "backend IPv6 in an IPv4 service", yaml: svc("    backends: [{name: be1, address: \"[2001:2::1]:80\"}]\n"), pos: "4:37", msg: "[2001:2::1]:80 is IPv6 but the service listens on IPv4; a service has one address family"},
		{desc: "backend IPv4-mapped", yaml: svc("    backends: [{name: be1, address: \"[::ffff:198.19.1.1]:80\"}]\n"), pos: "4:37", msg: "IPv4-mapped IPv6 address; write 198.19.1.1:80"},
		{desc: "backend is the listen address", yaml: svc("    backends: [{name: be1, address: 198.18.1.1:80}]\n"), pos: "4:37", msg: "198.18.1.1:80 is the service's own listen address"},
		{desc: "weight 0", yaml: svc("    backends: [{name: be1, address: 198.19.1.1:80, weight: 0}]\n"), pos: "4:60", msg: "weight: 0 is out of range 1..1000"},
		{desc: "weight 1001", yaml: svc("    backends: [{name: be1, address: 198.19.1.1:80, weight: 1001}]\n"), pos: "4:60", msg: "weight: 1001 is out of range 1..1000"},
		{desc: "weight beyond any integer", yaml: svc("    backends: [{name: be1, address: 198.19.1.1:80, weight: -99999999999999999999}]\n"), pos: "4:60", msg: "weight: -99999999999999999999 is out of range 1..1000"},
		{desc: "duplicate backend across pools", yaml: svc("    pools:\n      - {name: default, backends: [{name: be1, address: 198.19.1.1:80}]}\n      - {name: vip, backends: [{name: be1, address: 198.19.1.2:80}]}\n"), pos: "6:39", msg: `service "web": backend "be1": name: duplicate; backend names are unique within a service (first at line 5)`},
		{desc: "ipset name too long", yaml: "services:\n  - name: abcdefghijkl\n    listen: 198.18.1.1:80\n    backends: [{name: backend-number-1, address: 198.19.1.1:80}]\n", pos: "4:23", msg: `ipset name "ho-abcdefghijkl-backend-number-1" is 32 characters, the limit is 31`},
		{desc: "ipset name too long for IPv6", yaml: "services:\n  - name: abcdefghijkl\n    listen: \"[2001:2::1]:80\"\n    backends: [{name: backend-number1, address: \"[2001:2::2]:80\"}]\n", pos: "4:23", msg: `ipset name "ho6-abcdefghijkl-backend-number1" is 32 characters, the limit is 31`},
		{desc: "ipset name collision", yaml: "services:\n  - name: a-b\n    listen: 198.18.1.1:80\n    backends: [{name: c, address: 198.19.1.1:80}]\n  - name: a\n    listen: 198.18.1.2:80\n    backends: [{name: b-c, address: 198.19.1.2:80}]\n", pos: "7:23", msg: `service "a": backend "b-c": name: ipset name "ho-a-b-c" is also the set of service "a-b" backend "c" (line 4)`},

		// Routes.
		{desc: "route to a missing pool", yaml: svc("    routes:\n      - {match: {key: a}, pool: vpi}\n    pools: [{name: default}, {name: vip}]\n"), pos: "5:33", msg: `routes[0]: pool: no pool named "vpi" in this service (pools: default, vip); did you mean "vip"?`},
		{desc: "route without pool", yaml: svc("    routes:\n      - match: {key: a}\n"), pos: "5:9", msg: `service "web": routes[0]: pool: required`},
		{desc: "route without match", yaml: svc("    routes:\n      - pool: default\n"), pos: "5:9", msg: "routes[0]: match: required"},
		{desc: "match with nothing", yaml: svc("    routes:\n      - {match: {}, pool: default}\n"), pos: "5:17", msg: "match: needs exactly one of cidr, key, key_regex, hash_range (found none)"},
		{desc: "match with two conditions", yaml: svc("    routes:\n      - {match: {key: a, key_regex: b}, pool: default}\n"), pos: "5:17", msg: "match: needs exactly one of cidr, key, key_regex, hash_range (found key, key_regex)"},
		{desc: "match is a string", yaml: svc("    routes:\n      - {match: all, pool: default}\n"), pos: "5:17", msg: `routes[0]: match: expected a mapping, found the string "all"`},
		{desc: "cidr with host bits", yaml: svc("    routes:\n      - {match: {cidr: 198.18.1.5/24}, pool: default}\n"), pos: "5:24", msg: `match.cidr: "198.18.1.5/24" has host bits set; did you mean 198.18.1.0/24?`},
		{desc: "cidr without length", yaml: svc("    routes:\n      - {match: {cidr: 198.18.1.5}, pool: default}\n"), pos: "5:24", msg: `"198.18.1.5" has no prefix length; write 198.18.1.5/32 for one address`},
		{desc: "cidr of the other family", yaml: svc("    routes:\n      - {match: {cidr: \"2001:2::/48\"}, pool: default}\n"), pos: "5:24", msg: "match.cidr: 2001:2::/48 is IPv6 but the service listens on IPv4"},
		{desc: "cidr garbage", yaml: svc("    routes:\n      - {match: {cidr: lan}, pool: default}\n"), pos: "5:24", msg: `"lan" is not a CIDR prefix`},
		{desc: "cidr mapped", yaml: "services:\n  - name: web\n    listen: \"[2001:2::1]:80\"\n    routes:\n      - {match: {cidr: \"::ffff:198.18.0.0/112\"}, pool: default}\n", pos: "5:24", msg: "IPv4-mapped IPv6 prefix"},
		{desc: "empty key", yaml: svc("    routes:\n      - {match: {key: \"\"}, pool: default}\n"), pos: "5:23", msg: "match.key: must not be empty"},
		{desc: "sni key that is no host name", yaml: svc("    classify: sni\n    routes:\n      - {match: {key: \"a b\"}, pool: default}\n"), pos: "6:23", msg: `match.key: "a b" is not a host name or IP address, which is all classify: sni yields`},
		{desc: "key_regex does not compile", yaml: svc("    routes:\n      - {match: {key_regex: '[a-'}, pool: default}\n"), pos: "5:29", msg: "match.key_regex: invalid regexp: missing closing ]"},
		{desc: "hash_range reversed", yaml: svc("    routes:\n      - {match: {hash_range: [500, 499]}, pool: default}\n"), pos: "5:30", msg: "match.hash_range: [500, 499]: lo is above hi"},
		{desc: "hash_range above 999", yaml: svc("    routes:\n      - {match: {hash_range: [0, 1000]}, pool: default}\n"), pos: "5:34", msg: "match.hash_range: 1000 is out of range 0..999"},
		{desc: "hash_range negative", yaml: svc("    routes:\n      - {match: {hash_range: [-1, 5]}, pool: default}\n"), pos: "5:31", msg: "match.hash_range: -1 is out of range 0..999"},
		{desc: "hash_range one number", yaml: svc("    routes:\n      - {match: {hash_range: [5]}, pool: default}\n"), pos: "5:30", msg: "match.hash_range: expected [lo, hi] with 0 <= lo <= hi <= 999"},
		{desc: "hash_range a string", yaml: svc("    routes:\n      - {match: {hash_range: 0-499}, pool: default}\n"), pos: "5:30", msg: "expected [lo, hi]"},
		{desc: "hash_range of strings", yaml: svc("    routes:\n      - {match: {hash_range: [a, b]}, pool: default}\n"), pos: "5:31", msg: `match.hash_range: expected an integer, found the string "a"`},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			c, err := Parse("test.yaml", []byte(tt.yaml))
			if err == nil {
				t.Fatalf("no error; want %s: %s", tt.pos, tt.msg)
			}
			if c != nil {
				t.Errorf("config returned with errors")
			}
			var es Errors
			if !errors.As(err, &es) {
				t.Fatalf("error %T is not Errors: %v", err, err)
			}
			want := 1
			if tt.n != 0 {
				want = tt.n
			}
			if want > 0 && len(es) != want {
				t.Errorf("%d errors, want %d:\n%v", len(es), want, err)
			}
			found := false
			for _, e := range es {
				if fmt.Sprintf("%d:%d", e.Line, e.Column) == tt.pos && strings.Contains(e.Msg, tt.msg) {
					found = true
				}
				if e.File != "test.yaml" {
					t.Errorf("error %v: file %q", e, e.File)
				}
			}
			if !found {
				t.Errorf("no error at %s containing %q in:\n%v", tt.pos, tt.msg, err)
			}
		})
	}
}

// The "ipset name too long for IPv6 only" case above relies on 31 being
// within the limit: it must in fact parse.
func TestSetNameAtLimit(t *testing.T) {
	in := "services:\n  - name: abcdefghijkl\n    listen: \"[2001:2::1]:80\"\n    backends: [{name: backend-number, address: \"[2001:2::2]:80\"}]\n"
	if _, err := Parse("", []byte(in)); err != nil {
		t.Fatalf("31-character set name: %v", err)
	}
}

func TestParseReportsEveryError(t *testing.T) {
	in := `mode: fast
log: {level: info, format: yaml}
services:
  - name: web
    listen: 198.18.1.1:80
    client_ttl: 10
    pools:
      - name: default
        backends:
          - {name: be1, address: 198.19.1.1:80}
          - {name: be1, address: 198.19.1.2:80, weight: 0}
    routes:
      - {match: {cidr: 198.18.1.1/24}, pool: nope}
  - name: web
    listen: 198.18.1.1:80
    heath: {}
`
	want := []string{
		`f.yaml:1:7: mode: "fast" is not one of auto, kernel, userspace`,
		`f.yaml:2:28: log.format: "yaml" is not one of text, json`,
		`f.yaml:6:17: service "web": client_ttl: "10" is not a duration`,
		`f.yaml:11:20: service "web": backend "be1": name: duplicate`,
		`f.yaml:11:57: service "web": backend "be1": weight: 0 is out of range 1..1000`,
		`f.yaml:13:24: service "web": routes[0]: match.cidr: "198.18.1.1/24" has host bits set; did you mean 198.18.1.0/24?`,
		`f.yaml:13:46: service "web": routes[0]: pool: no pool named "nope"`,
		`f.yaml:14:11: service "web": name: duplicate; service names are unique (first at line 4)`,
		`f.yaml:15:13: service "web": listen: 198.18.1.1:80 conflicts with the listen address 198.18.1.1:80 of service "web" (line 5)`,
		`f.yaml:16:5: service "web": unknown key "heath"; did you mean "health"?`,
	}
	_, err := Parse("f.yaml", []byte(in))
	if err == nil {
		t.Fatal("no error")
	}
	got := strings.Split(err.Error(), "\n")
	if len(got) != len(want) {
		t.Errorf("%d errors, want %d:\n%v", len(got), len(want), err)
	}
	for i := range min(len(got), len(want)) {
		if !strings.HasPrefix(got[i], want[i]) {
			t.Errorf("error %d:\n got %s\nwant %s…", i, got[i], want[i])
		}
	}
}

// design returns the example of DESIGN.md section 4 (testdata/design.yaml,
// a verbatim copy) with classify set to payload: the example sets
// payload.pattern and routes on station keys, which classify: payload is
// for, while its classify line says source.
func design(t *testing.T) []byte {
	t.Helper()
	data, err := os.ReadFile("testdata/design.yaml")
	if err != nil {
		t.Fatal(err)
	}
	fixed := strings.Replace(string(data), "classify: source ", "classify: payload", 1)
	if fixed == string(data) {
		t.Fatal("testdata/design.yaml: no classify: source line")
	}
	return []byte(fixed)
}

func TestDesignExampleVerbatim(t *testing.T) {
	data, err := os.ReadFile("testdata/design.yaml")
	if err != nil {
		t.Fatal(err)
	}
	c, err := Parse("design.yaml", data)
	if err != nil {
		t.Fatalf("the verbatim DESIGN example must validate: %v", err)
	}
	if c.Services[0].Payload.Pattern != nil {
		t.Errorf("classify: source keeps an unused pattern")
	}
}

func TestDesignExample(t *testing.T) {
	c, err := Parse("design.yaml", design(t))
	if err != nil {
		t.Fatal(err)
	}
	checkInvariants(t, c)
	web := Service{
		Name:            "web",
		Listen:          netip.MustParseAddrPort("198.18.1.1:80"),
		FirstConnection: FirstProxy,
		ClientTTL:       30 * time.Minute,
		SNAT:            false,
		MaxClients:      1048576,
		OnFull:          OnFullProxy,
		PinBudget:       PinBudget{PerPrefix: 1024, IPv4Prefix: 24, IPv6Prefix: 64},
		Classify:        ClassifyPayload,
		Payload:         Payload{Pattern: regexp.MustCompile(`^HELLO station=(\w+)`), MaxBytes: 512, Timeout: 2 * time.Second},
		OnUnclassified:  "default",
		OnBackendDown:   "rehash",
		Timeouts:        Timeouts{Connect: 3 * time.Second, Idle: 10 * time.Minute},
		MaxConnections:  10000,
		ProxyProtocol:   "off",
		Health: Health{
			Check: CheckTCP, Interval: 2 * time.Second, Timeout: time.Second, Rise: 2, Fall: 3,
			HTTPPath: "/healthz", ExpectStatus: 200,
		},
		Routes: []Route{
			{Match: Match{CIDR: netip.MustParsePrefix("198.18.1.0/28")}, Pool: "vip"},
			{Match: Match{Key: "station-7"}, Pool: "vip"},
			{Match: Match{KeyRegex: regexp.MustCompile(`^eu-`)}, Pool: "default"},
			{Match: Match{HashRange: &[2]int{0, 499}}, Pool: "default"},
		},
		Pools: []Pool{
			{Name: "default", Balance: BalanceMaglev, Failback: true, Backends: []Backend{
				{Name: "be1", Address: netip.MustParseAddrPort("198.19.1.11:80"), Weight: 2},
				{Name: "be2", Address: netip.MustParseAddrPort("198.19.1.12:80"), Weight: 1},
			}},
			{Name: "vip", Balance: BalanceHotStandby, Failback: true, Backends: []Backend{
				{Name: "primary", Address: netip.MustParseAddrPort("198.19.1.13:80"), Weight: 1},
				{Name: "standby", Address: netip.MustParseAddrPort("198.19.1.14:80"), Weight: 1},
			}},
		},
	}
	want := &Config{
		Path:     "design.yaml",
		Mode:     ModeAuto,
		Log:      Log{Level: "info", Format: "text", SummaryInterval: 5 * time.Second, Access: true},
		Admin:    Admin{Listen: "127.0.0.1:9900"},
		Kernel:   Kernel{MarkMask: DefaultMarkMask, Queue: DefaultQueue, RouteTable: DefaultRouteTable, RulePriority: DefaultRulePriority},
		StateDir: "/var/lib/handoff",
		Services: []Service{web},
	}
	compare(t, c, want)
	if c.Service("web").Pool("vip").Backends[0].Name != "primary" {
		t.Error("lookup helpers")
	}
}

func TestDefaults(t *testing.T) {
	c, err := Parse("min.yaml", []byte(svc("")))
	if err != nil {
		t.Fatal(err)
	}
	checkInvariants(t, c)
	want := &Config{
		Path:     "min.yaml",
		Mode:     ModeAuto,
		Log:      Log{Level: "info", Format: "text", SummaryInterval: DefaultSummaryInterval, Access: true},
		Admin:    Admin{Listen: DefaultAdminListen},
		Kernel:   Kernel{MarkMask: DefaultMarkMask, Queue: DefaultQueue, RouteTable: DefaultRouteTable, RulePriority: DefaultRulePriority},
		StateDir: DefaultStateDir,
		Services: []Service{{
			Name:            "web",
			Listen:          netip.MustParseAddrPort("198.18.1.1:80"),
			FirstConnection: FirstProxy,
			ClientTTL:       DefaultClientTTL,
			MaxClients:      DefaultMaxClients,
			OnFull:          OnFullProxy,
			PinBudget:       PinBudget{PerPrefix: DefaultPinBudget, IPv4Prefix: DefaultBudgetPrefix4, IPv6Prefix: DefaultBudgetPrefix6},
			Classify:        ClassifySource,
			Payload:         Payload{MaxBytes: DefaultPeekMaxBytes, Timeout: DefaultPayloadTimeout},
			OnUnclassified:  "default",
			OnBackendDown:   "rehash",
			Timeouts:        Timeouts{Connect: DefaultConnectTimeout, Idle: DefaultIdleTimeout},
			MaxConnections:  DefaultMaxConnections,
			ProxyProtocol:   "off",
			Health: Health{Check: CheckTCP, Interval: DefaultHealthInterval, Timeout: DefaultHealthTimeout,
				Rise: DefaultRise, Fall: DefaultFall, HTTPPath: "/healthz", ExpectStatus: 200},
			Pools: []Pool{{Name: "default", Balance: BalanceMaglev, Failback: true}},
		}},
	}
	compare(t, c, want)
}

// TestSectionDefaults: health and payload fields that are absent take the
// defaults DESIGN.md section 4 documents, in the parsed Config itself (other
// packages default nothing), and DefaultHealth and DefaultPayload are those.
func TestSectionDefaults(t *testing.T) {
	health := Health{Check: CheckTCP, Interval: 2 * time.Second, Timeout: time.Second, Rise: 2, Fall: 3, HTTPPath: "/healthz", ExpectStatus: 200}
	peek := Payload{MaxBytes: 16384, Timeout: 2 * time.Second}
	tests := []struct {
		desc    string
		extra   string
		health  func(*Health)
		payload Payload
	}{
		{"no sections", "", nil, peek},
		{"empty sections", "    health: {}\n    payload: {}\n", nil, peek},
		{"null sections", "    health:\n    payload:\n", nil, peek},
		{"http check", "    health: {check: http}\n", func(h *Health) { h.Check = CheckHTTP }, peek},
		{"http path only", "    health: {check: http, http: {path: /up}}\n", func(h *Health) { h.Check, h.HTTPPath = CheckHTTP, "/up" }, peek},
		{"rise only", "    health: {rise: 5}\n", func(h *Health) { h.Rise = 5 }, peek},
		{"interval only", "    health: {interval: 10s}\n", func(h *Health) { h.Interval = 10 * time.Second }, peek},
		{"none", "    health: {check: none}\n", func(h *Health) { h.Check = CheckNone }, peek},
		{"sni", "    classify: sni\n", nil, peek},
		{"http-host with a timeout", "    classify: http-host\n    payload: {timeout: 1s}\n", nil, Payload{MaxBytes: 16384, Timeout: time.Second}},
		{"payload", "    classify: payload\n    payload: {pattern: '^(x)'}\n", nil, Payload{MaxBytes: 512, Timeout: 2 * time.Second}},
		{"payload max_bytes only", "    classify: payload\n    payload: {pattern: '^(x)', max_bytes: 64}\n", nil, Payload{MaxBytes: 64, Timeout: 2 * time.Second}},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			c, err := Parse("d.yaml", []byte(svc(tt.extra)))
			if err != nil {
				t.Fatal(err)
			}
			s := c.Services[0]
			want := health
			if tt.health != nil {
				tt.health(&want)
			}
			if s.Health != want {
				t.Errorf("health %+v, want %+v", s.Health, want)
			}
			got := s.Payload
			got.Pattern = nil
			if got != tt.payload {
				t.Errorf("payload %+v, want %+v", got, tt.payload)
			}
		})
	}
	if DefaultHealth() != health {
		t.Errorf("DefaultHealth() = %+v, want %+v", DefaultHealth(), health)
	}
	for c, want := range map[Classify]Payload{ClassifySource: peek, ClassifySNI: peek, ClassifyHTTPHost: peek, ClassifyPayload: {MaxBytes: 512, Timeout: 2 * time.Second}} {
		if got := DefaultPayload(c); got != want {
			t.Errorf("DefaultPayload(%s) = %+v, want %+v", c, got, want)
		}
	}
}

func TestParseGood(t *testing.T) {
	tests := []struct {
		desc  string
		yaml  string
		check func(t *testing.T, c *Config)
	}{
		{"shorthand becomes one pool named default", svc("    balance: hot-standby\n    backends:\n      - {name: a, address: 198.19.1.1:80}\n      - {name: b, address: 198.19.1.2:8080, weight: 1000}\n"), func(t *testing.T, c *Config) {
			p := c.Services[0].Pools
			if len(p) != 1 || p[0].Name != "default" || p[0].Balance != BalanceHotStandby || !p[0].Failback || len(p[0].Backends) != 2 || p[0].Backends[1].Weight != 1000 {
				t.Errorf("pools %+v", p)
			}
		}},
		{"admin API off", "admin: {listen: \"off\"}\n" + svc(""), func(t *testing.T, c *Config) {
			if c.Admin.Listen != "" {
				t.Errorf("admin.listen off = %q, want \"\"", c.Admin.Listen)
			}
		}},
		{"failback false for hot-standby", svc("    balance: hot-standby\n    failback: false\n"), func(t *testing.T, c *Config) {
			if c.Services[0].Pools[0].Failback {
				t.Error("failback")
			}
		}},
		{"failback keep for maglev", svc("    pools: [{name: default, failback: keep}]\n"), func(t *testing.T, c *Config) {
			if c.Services[0].Pools[0].Failback {
				t.Error("failback keep")
			}
		}},
		{"failback rehash for round-robin", svc("    pools: [{name: default, balance: round-robin, failback: rehash}]\n"), func(t *testing.T, c *Config) {
			if !c.Services[0].Pools[0].Failback {
				t.Error("failback rehash")
			}
		}},
		{"failback defaults by policy", svc("    pools:\n      - {name: default, balance: source-hash}\n      - {name: b, balance: round-robin}\n      - {name: c, balance: least-conn}\n      - {name: d, balance: random}\n"), func(t *testing.T, c *Config) {
			for _, p := range c.Services[0].Pools {
				if want := p.Balance == BalanceSourceHash; p.Failback != want {
					t.Errorf("pool %s (%s): failback %v, want %v", p.Name, p.Balance, p.Failback, want)
				}
			}
		}},
		{"loopback backends in userspace mode", "mode: userspace\n" + svc("    backends: [{name: a, address: 127.0.0.1:80}]\n"), func(t *testing.T, c *Config) {
			if a := c.Services[0].Pools[0].Backends[0].Address.String(); a != "127.0.0.1:80" {
				t.Errorf("address %s", a)
			}
		}},
		{"on_full and pin_budget", svc("    on_full: reject\n    pin_budget: {per_prefix: 0, ipv4_prefix: 16, ipv6_prefix: 48}\n"), func(t *testing.T, c *Config) {
			s := c.Services[0]
			if s.OnFull != OnFullReject || s.PinBudget != (PinBudget{PerPrefix: 0, IPv4Prefix: 16, IPv6Prefix: 48}) {
				t.Errorf("on_full %q, pin_budget %+v", s.OnFull, s.PinBudget)
			}
		}},
		{"ipv6_pin_prefix", svc("    ipv6_pin_prefix: 64\n"), func(t *testing.T, c *Config) {
			if p := c.Services[0].IPv6PinPrefix; p != 64 {
				t.Errorf("ipv6_pin_prefix %d", p)
			}
		}},
		{"ipv6_pin_prefix 128 is per address", svc("    ipv6_pin_prefix: 128\n"), func(t *testing.T, c *Config) {
			if p := c.Services[0].IPv6PinPrefix; p != 0 {
				t.Errorf("ipv6_pin_prefix %d", p)
			}
		}},
		{"failback true for maglev", svc("    pools: [{name: default, failback: yes}]\n"), func(t *testing.T, c *Config) {
			if !c.Services[0].Pools[0].Failback {
				t.Error("failback")
			}
		}},
		{"no default pool with on_unclassified reject", svc("    on_unclassified: reject\n    pools: [{name: vip}]\n"), nil},
		{"IPv4 and IPv6 on the same port", "services:\n  - name: a\n    listen: 0.0.0.0:80\n  - name: b\n    listen: \"[::]:80\"\n", nil},
		{"same address, other ports", "services:\n  - name: a\n    listen: 198.18.1.1:80\n  - name: b\n    listen: 198.18.1.1:443\n", nil},
		{"IPv6 service", "services:\n  - name: v6\n    listen: \"[2001:2::1]:443\"\n    routes: [{match: {cidr: \"2001:2:0:1::/64\"}, pool: default}]\n    backends: [{name: be1, address: \"[2001:2::10]:443\"}]\n", func(t *testing.T, c *Config) {
			s := c.Services[0]
			if !s.Listen.Addr().Is6() || s.Routes[0].Match.CIDR.Bits() != 64 {
				t.Errorf("%+v", s)
			}
		}},
		{"registered classifier", svc("    classify: station-id\n"), func(t *testing.T, c *Config) {
			s := c.Services[0]
			if s.Classify != "station-id" || s.Payload.MaxBytes != DefaultPeekMaxBytes || s.Payload.Pattern != nil {
				t.Errorf("%+v", s)
			}
		}},
		{"sni defaults to 16384 bytes", svc("    classify: sni\n"), func(t *testing.T, c *Config) {
			if c.Services[0].Payload.MaxBytes != 16384 {
				t.Error(c.Services[0].Payload)
			}
		}},
		{"client_ttl 0 is forever, max is 2147483s", svc("    client_ttl: 0\n  - name: b\n    listen: 198.18.1.2:80\n    client_ttl: 2147483s\n"), func(t *testing.T, c *Config) {
			if c.Services[0].ClientTTL != 0 || c.Services[1].ClientTTL != MaxClientTTL {
				t.Error(c.Services[0].ClientTTL, c.Services[1].ClientTTL)
			}
		}},
		{"admin on every address with a token", "admin: {listen: \"0.0.0.0:9900\", token_file: /etc/handoff/token, pprof: true}\n" + svc(""), func(t *testing.T, c *Config) {
			if c.Admin != (Admin{Listen: "0.0.0.0:9900", TokenFile: "/etc/handoff/token", Pprof: true}) {
				t.Error(c.Admin)
			}
		}},
		{"admin on localhost and IPv6 loopback", "admin: {listen: \"localhost:9901\"}\n" + svc("  - name: b\n    listen: 198.18.1.2:80\n"), nil},
		{"admin on IPv6 loopback", "admin: {listen: \"[::1]:9900\"}\n" + svc(""), nil},
		{"health send-expect", svc("    health: {check: send-expect, send: \"PING\\r\\n\", expect: \"+PONG\", interval: 1s, timeout: 1s, rise: 1, fall: 1}\n"), func(t *testing.T, c *Config) {
			h := c.Services[0].Health
			if h.Send != "PING\r\n" || h.Expect != "+PONG" || h.Timeout != h.Interval {
				t.Errorf("%+v", h)
			}
		}},
		{"health http", svc("    health: {check: http, http: {path: /ready, expect_status: 204}}\n"), func(t *testing.T, c *Config) {
			h := c.Services[0].Health
			if h.Check != CheckHTTP || h.HTTPPath != "/ready" || h.ExpectStatus != 204 {
				t.Errorf("%+v", h)
			}
		}},
		{"proxy protocol in userspace mode", "mode: userspace\n" + svc("    proxy_protocol: v1\n"), nil},
		{"proxy protocol in auto mode (--mode userspace overrides it; auto runs in userspace)", svc("    proxy_protocol: v1\n"), nil},
		{"admin on a unix socket, without a token", "admin: {listen: \"unix:/run/handoff/admin.sock\"}\n" + svc(""), func(t *testing.T, c *Config) {
			if c.Admin.Listen != "unix:/run/handoff/admin.sock" {
				t.Errorf("admin.listen %q", c.Admin.Listen)
			}
		}},
		{"metrics on every address, access log off", "metrics: {listen: \":9100\"}\nlog: {access: off}\n" + svc(""), func(t *testing.T, c *Config) {
			if c.Metrics.Listen != ":9100" || c.Log.Access {
				t.Errorf("metrics.listen %q, log.access %v", c.Metrics.Listen, c.Log.Access)
			}
		}},
		{"proxy_protocol off is a string", svc("    proxy_protocol: off\n"), nil},
		{"integer spellings", svc("    max_clients: 0x10000\n    max_connections: 1_000\n"), func(t *testing.T, c *Config) {
			if c.Services[0].MaxClients != 65536 || c.Services[0].MaxConnections != 1000 {
				t.Error(c.Services[0].MaxClients, c.Services[0].MaxConnections)
			}
		}},
		{"anchors, aliases and merge keys", `
x-health: &health {check: http, interval: 5s}
x-be: &be {address: 198.19.1.1:80, weight: 3}
services:
  - &web
    name: web
    listen: 198.18.1.1:80
    health: *health
    backends:
      - {<<: *be, name: be1}
      - <<: [*be]
        name: be2
        weight: 4
`, nil},
		{"empty second document", svc("---\n"), nil},
		{"hash_range bounds", svc("    routes:\n      - {match: {hash_range: [0, 999]}, pool: default}\n      - {match: {hash_range: [7, 7]}, pool: default}\n"), func(t *testing.T, c *Config) {
			r := c.Services[0].Routes
			if *r[0].Match.HashRange != [2]int{0, 999} || *r[1].Match.HashRange != [2]int{7, 7} {
				t.Error(r)
			}
		}},
		{"service with zero backends", svc("    pools: [{name: default}, {name: spare, balance: least-conn}]\n"), func(t *testing.T, c *Config) {
			if len(c.Services[0].Pools) != 2 || c.Services[0].Pools[1].Balance != BalanceLeastConn {
				t.Error(c.Services[0].Pools)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			c, err := Parse("good.yaml", []byte(tt.yaml))
			if err != nil {
				t.Fatal(err)
			}
			checkInvariants(t, c)
			if tt.check != nil {
				tt.check(t, c)
			}
		})
	}
}

func TestExamples(t *testing.T) {
	files, err := filepath.Glob("../deploy/examples/*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"game-payload.yaml", "hot-standby.yaml", "http-host.yaml", "ipv6.yaml", "tls-sni.yaml", "userspace-container.yaml", "web-source-ip.yaml"}
	var got []string
	for _, f := range files {
		got = append(got, filepath.Base(f))
	}
	for _, w := range want {
		if !strings.Contains(strings.Join(got, " "), w) {
			t.Errorf("deploy/examples/%s is missing", w)
		}
	}
	documentation := []netip.Prefix{netip.MustParsePrefix("198.18.0.0/15"), netip.MustParsePrefix("2001:2::/48")}
	inRange := func(a netip.Addr) bool {
		for _, p := range documentation {
			if p.Contains(a) {
				return true
			}
		}
		return false
	}
	files = append(files, "../deploy/container.yaml", "../deploy/cluster/lb1.yaml") // the container image's default; the pair's host
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			c, err := Load(f)
			var es Errors
			if errors.As(err, &es) && len(es) == 1 && strings.Contains(es[0].Msg, "admin.token_file: /run/secrets/") {
				// The example's token is a container secret, absent here.
				data, rerr := os.ReadFile(f)
				if rerr != nil {
					t.Fatal(rerr)
				}
				c, err = Parse(f, data)
			}
			if err != nil {
				t.Fatal(err)
			}
			checkInvariants(t, c)
			if c.Path != f {
				t.Errorf("Path %q", c.Path)
			}
			for _, s := range c.Services {
				if !inRange(s.Listen.Addr()) && !s.Listen.Addr().IsUnspecified() { // a container listens on every address
					t.Errorf("service %s listens on %s, outside the documentation ranges", s.Name, s.Listen)
				}
				for _, p := range s.Pools {
					for _, b := range p.Backends {
						if !inRange(b.Address.Addr()) {
							t.Errorf("backend %s at %s, outside the documentation ranges", b.Name, b.Address)
						}
					}
				}
			}
		})
	}
	check := func(name string, fn func(c *Config) bool) {
		c, err := Load("../deploy/examples/" + name)
		if err == nil && !fn(c) {
			t.Errorf("%s does not show its use case", name)
		}
	}
	check("web-source-ip.yaml", func(c *Config) bool {
		s := c.Services[0]
		return c.Mode == ModeKernel && s.Classify == ClassifySource && s.Pools[0].Balance == BalanceMaglev
	})
	check("game-payload.yaml", func(c *Config) bool {
		s := c.Services[0]
		return s.Classify == ClassifyPayload && s.Payload.Pattern != nil && len(s.Routes) > 0 && len(s.Pools) > 1
	})
	check("tls-sni.yaml", func(c *Config) bool { return c.Services[0].Classify == ClassifySNI })
	check("http-host.yaml", func(c *Config) bool { return c.Services[0].Classify == ClassifyHTTPHost })
	check("hot-standby.yaml", func(c *Config) bool { return c.Services[0].Pools[0].Balance == BalanceHotStandby })
	check("userspace-container.yaml", func(c *Config) bool {
		return c.Mode == ModeUserspace && c.Services[0].ProxyProtocol == ProxyProtocolV2
	})
	check("ipv6.yaml", func(c *Config) bool { return c.Services[0].Listen.Addr().Is6() })
}

func TestLoad(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "nope.yaml")
	_, err := Load(missing)
	if err == nil || !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), missing) {
		t.Errorf("Load(missing) = %v", err)
	}
	if strings.Count(err.Error(), "\n") != 0 {
		t.Errorf("not one line: %q", err)
	}

	bad := filepath.Join(t.TempDir(), "bad.yaml")
	if err := os.WriteFile(bad, []byte("mode: fast\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = Load(bad)
	var es Errors
	if !errors.As(err, &es) || len(es) != 2 || es[1].File != bad {
		t.Fatalf("Load(bad) = %#v", err)
	}
	if got, want := es[1].Error(), bad+":1:7: mode: \"fast\" is not one of auto, kernel, userspace"; got != want {
		t.Errorf("got %s, want %s", got, want)
	}
	var one Error
	if !errors.As(err, &one) || one != es[0] || one.Line != 1 || one.Column != 1 {
		t.Errorf("errors.As(Error) = %v", one)
	}
}

// TestLoadDeployable: Load refuses, with positions, what Parse leaves to
// the caller: a token file that is missing or empty, and a pool without a
// backend.
func TestLoadDeployable(t *testing.T) {
	dir := t.TempDir()
	token := filepath.Join(dir, "token")
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(token, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(empty, []byte(" \n"), 0o600); err != nil {
		t.Fatal(err)
	}
	backends := "    backends: [{name: b0, address: 198.19.0.1:80}]\n"
	tests := []struct {
		desc, yaml, want string // want: "" or LINE:COL: message substring
	}{
		{"token file present", "admin: {listen: \"0.0.0.0:9900\", token_file: " + token + "}\n" + svc(backends), ""},
		{"token file missing", "admin: {listen: \"0.0.0.0:9900\", token_file: " + filepath.Join(dir, "nope") + "}\n" + svc(backends), "1:45: admin.token_file: " + filepath.Join(dir, "nope") + " does not exist"},
		{"token file empty", "admin: {token_file: " + empty + "}\n" + svc(backends), "1:21: admin.token_file: " + empty + " is empty"},
		{"no backends", svc(""), "2:5: service \"web\": backends: none; a pool needs at least one backend"},
		{"empty backends", svc("    backends: []\n"), "4:15: service \"web\": backends: none"},
		{"a pool without backends", svc("    pools:\n      - {name: default, backends: [{name: a, address: 198.19.0.1:80}]}\n      - {name: spare}\n"), "6:9: service \"web\": pool \"spare\": backends: none"},
	}
	for i, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			f := filepath.Join(dir, fmt.Sprintf("c%d.yaml", i))
			if err := os.WriteFile(f, []byte(tt.yaml), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := Load(f)
			if tt.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), f+":"+tt.want) {
				t.Fatalf("Load = %v, want %s:%s", err, f, tt.want)
			}
			if _, err := Parse(f, []byte(tt.yaml)); err != nil {
				t.Errorf("Parse refuses it too: %v", err)
			}
		})
	}
}

func TestErrorFormat(t *testing.T) {
	es := Errors{{File: "a.yaml", Line: 2, Column: 3, Msg: "x"}, {Line: 4, Column: 1, Msg: "y"}}
	if got, want := es.Error(), "a.yaml:2:3: x\n4:1: y"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	_, err := Parse("", []byte("mode: fast\nservices: []\n"))
	if got, want := err.Error(), "1:7: mode: \"fast\" is not one of auto, kernel, userspace\n2:11: services: empty; a config needs at least one service"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

func TestRegisterClassify(t *testing.T) {
	for _, name := range []string{"station-id", "source", "", "Upper", "-x"} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("RegisterClassify(%q) did not panic", name)
				}
			}()
			RegisterClassify(name)
		}()
	}
}

// TestCheckClassifyName: the one rule for classify names, which
// RegisterClassify and classifier.Register both apply.
func TestCheckClassifyName(t *testing.T) {
	for name, ok := range map[string]bool{
		"myproto": true, "a": true, "9-to-5": true, strings.Repeat("x", 32): true,
		"": false, "Upper": false, "-x": false, "a.b": false, "a_b": false, "has space": false, strings.Repeat("x", 33): false,
	} {
		if err := CheckClassifyName(name); (err == nil) != ok {
			t.Errorf("CheckClassifyName(%q) = %v, want ok %v", name, err, ok)
		}
	}
}

// compare checks got against want field by field, regexps by their source.
func compare(t *testing.T, got, want *Config) {
	t.Helper()
	g, w := strip(got), strip(want)
	if !reflect.DeepEqual(g, w) {
		t.Errorf("config mismatch\n got %+v\nwant %+v", g, w)
	}
}

// strip copies c with every regexp replaced by its source in a map, so that
// DeepEqual compares them as text.
func strip(c *Config) map[string]any {
	cp := *c
	res := map[string]string{}
	cp.Services = make([]Service, len(c.Services))
	for i, s := range c.Services {
		if s.Payload.Pattern != nil {
			res[fmt.Sprintf("%d.pattern", i)] = s.Payload.Pattern.String()
			s.Payload.Pattern = nil
		}
		s.Routes = append([]Route(nil), s.Routes...)
		for j := range s.Routes {
			if re := s.Routes[j].Match.KeyRegex; re != nil {
				res[fmt.Sprintf("%d.%d.key_regex", i, j)] = re.String()
				s.Routes[j].Match.KeyRegex = nil
			}
		}
		cp.Services[i] = s
	}
	return map[string]any{"config": cp, "regexps": res}
}

func TestCheckBackend(t *testing.T) {
	c, err := Parse("", []byte("services:\n  - name: abcdefghijkl\n    listen: 198.18.1.1:80\n"))
	if err != nil {
		t.Fatal(err)
	}
	s := &c.Services[0]
	ap := netip.MustParseAddrPort
	tests := []struct {
		b   Backend
		err string // substring; "" for valid
	}{
		{Backend{Name: "be1", Address: ap("198.19.1.1:80"), Weight: 1}, ""},
		{Backend{Name: "backend-number1", Address: ap("198.19.1.1:80"), Weight: 1000}, ""},
		{Backend{Name: "backend-number-1", Address: ap("198.19.1.1:80"), Weight: 1}, `ipset name "ho-abcdefghijkl-backend-number-1" is 32 characters, the limit is 31`},
		{Backend{Name: "Be1", Address: ap("198.19.1.1:80"), Weight: 1}, `backend "Be1": name: "Be1" is not a valid backend name`},
		{Backend{Name: "be1", Weight: 1}, "address: required"},
		{Backend{Name: "be1", Address: ap("198.19.1.1:0"), Weight: 1}, "port 0; a port 1..65535 is required"},
		{Backend{Name: "be1", Address: ap("[::ffff:198.19.1.1]:80"), Weight: 1}, "IPv4-mapped IPv6 address; write 198.19.1.1:80"},
		{Backend{Name: "be1", Address: ap("[2001:2::1]:80"), Weight: 1}, "is IPv6 but the service listens on IPv4"},
		{Backend{Name: "be1", Address: ap("198.18.1.1:80"), Weight: 1}, "is the service's own listen address"},
		{Backend{Name: "be1", Address: ap("198.19.1.1:80")}, "weight: 0 is out of range 1..1000"},
	}
	for _, tt := range tests {
		err := s.CheckBackend(tt.b)
		switch {
		case tt.err == "" && err != nil:
			t.Errorf("%+v: %v", tt.b, err)
		case tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)):
			t.Errorf("%+v: got %v, want %q", tt.b, err, tt.err)
		}
	}
}

// TestBackendRuleOneMessage: a backend in the file and the same backend
// registered at run time break the same rule with the same message; the
// file's error carries the position of the field at fault.
func TestBackendRuleOneMessage(t *testing.T) {
	const head = "services:\n  - name: abcdefghijkl\n    listen: 198.18.1.1:80\n    backends:\n"
	tests := []struct {
		desc, name, addr string
		weight           int
		field            string // at fault
	}{
		{"invalid name", "Be1", "198.19.1.1:80", 1, "name"},
		{"ipset name too long", "backend-number-1", "198.19.1.1:80", 1, "name"},
		{"port 0", "be1", "198.19.1.1:0", 1, "address"},
		{"unspecified address", "be1", "0.0.0.0:80", 1, "address"},
		{"IPv4-mapped address", "be1", "[::ffff:198.19.1.1]:80", 1, "address"},
		{"zone", "be1", "[fe80::1%eth0]:80", 1, "address"},
		{"other family", "be1", "[2001:2::1]:80", 1, "address"},
		{"the listen address", "be1", "198.18.1.1:80", 1, "address"},
		{"weight 0", "be1", "198.19.1.1:80", 0, "weight"},
		{"weight 1001", "be1", "198.19.1.1:80", 1001, "weight"},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			line := fmt.Sprintf("      - {name: %s, address: %q, weight: %d}", tt.name, tt.addr, tt.weight)
			_, err := Parse("f.yaml", []byte(head+line+"\n"))
			var es Errors
			if !errors.As(err, &es) || len(es) != 1 {
				t.Fatalf("file: want one error, got %v", err)
			}
			col := strings.Index(line, tt.field+": ") + len(tt.field) + 3
			if es[0].Line != 5 || es[0].Column != col {
				t.Errorf("file: error at %d:%d, want 5:%d (%s)", es[0].Line, es[0].Column, col, tt.field)
			}

			c, err := Parse("", []byte(head+"      - {name: ok, address: 198.19.1.9:80}\n"))
			if err != nil {
				t.Fatal(err)
			}
			b := Backend{Name: tt.name, Address: netip.MustParseAddrPort(tt.addr), Weight: tt.weight}
			rerr := c.Services[0].CheckBackend(b)
			var be *BackendError
			if !errors.As(rerr, &be) || be.Field != tt.field {
				t.Fatalf("registration: got %v, want a *BackendError about %s", rerr, tt.field)
			}
			if es[0].Msg != rerr.Error() {
				t.Errorf("messages differ:\n file:         %s\n registration: %s", es[0].Msg, rerr)
			}
		})
	}
}

// TestHostRouteKeys: the route keys of sni and http-host services are put
// in the form those classifiers give keys, so that they can match; other
// classifiers' keys stay as written.
func TestHostRouteKeys(t *testing.T) {
	for _, tc := range []struct {
		classify, key, want string
	}{
		{"sni", "WWW.Example.com", "www.example.com"},
		{"http-host", "api.example.com.", "api.example.com"},
		{"http-host", "[2001:2:0:0::1]", "2001:2::1"},
		{"sni", "2001:2::1", "2001:2::1"},
		{"http-host", "198.18.0.1", "198.18.0.1"},
		{"payload", "Station 7", "Station 7"},
	} {
		y := fmt.Sprintf("services:\n  - name: web\n    listen: 198.18.1.1:80\n    classify: %s\n", tc.classify)
		if tc.classify == "payload" {
			y += "    payload: {pattern: '^(.*)$'}\n"
		}
		y += fmt.Sprintf("    routes:\n      - {match: {key: %q}, pool: vip}\n    pools: [{name: default}, {name: vip}]\n", tc.key)
		c, err := Parse("test.yaml", []byte(y))
		if err != nil {
			t.Fatalf("%s key %q: %v", tc.classify, tc.key, err)
		}
		if got := c.Services[0].Routes[0].Match.Key; got != tc.want {
			t.Errorf("%s key %q became %q, want %q", tc.classify, tc.key, got, tc.want)
		}
	}
}
