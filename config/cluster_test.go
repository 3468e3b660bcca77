package config

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

// clusterYAML is svc("") followed by a cluster section; its first line is
// line 4.
func clusterYAML(section string) string { return svc("") + section }

func TestClusterErrors(t *testing.T) {
	tests := []struct {
		desc, yaml string
		pos, msg   string
	}{
		{"not a mapping", "cluster: yes\n", "4:10", "cluster: expected a mapping"},
		{"no name", "cluster:\n  etcd: {endpoints: [\"http://127.0.0.1:2379\"]}\n", "5:3", "cluster.name: required"},
		{"bad name", "cluster:\n  name: \"a b\"\n  etcd: {endpoints: [\"http://127.0.0.1:2379\"]}\n", "5:9", `cluster.name: "a b": want letters`},
		{"bad node", "cluster:\n  name: a\n  node: /x\n  etcd: {endpoints: [\"http://127.0.0.1:2379\"]}\n", "6:9", `cluster.node: "/x"`},
		{"no etcd", "cluster:\n  name: a\n", "5:3", "cluster.etcd: required"},
		{"no endpoints", "cluster:\n  name: a\n  etcd: {prefix: /x}\n", "6:9", "cluster.etcd.endpoints: required"},
		{"empty endpoints", "cluster:\n  name: a\n  etcd: {endpoints: []}\n", "6:21", "cluster.etcd.endpoints: empty"},
		{"endpoint without port", "cluster:\n  name: a\n  etcd:\n    endpoints: [\"http://127.0.0.1\"]\n", "7:17", `cluster.etcd.endpoints[0]: "http://127.0.0.1": no port`},
		{"endpoint scheme", "cluster:\n  name: a\n  etcd:\n    endpoints: [\"127.0.0.1:2379\"]\n", "7:17", "want http://HOST:PORT"},
		{"prefix", "cluster:\n  name: a\n  etcd:\n    endpoints: [\"http://127.0.0.1:2379\"]\n    prefix: handoff\n", "8:13", `cluster.etcd.prefix: "handoff": want a path`},
		{"cert without key", "cluster:\n  name: a\n  etcd:\n    endpoints: [\"http://127.0.0.1:2379\"]\n    tls: {cert_file: /c}\n", "8:22", "cluster.etcd.tls.cert_file: needs key_file too"},
		{"misplaced key", "cluster:\n  name: a\n  endpoints: [\"http://127.0.0.1:2379\"]\n  etcd: {endpoints: [\"http://127.0.0.1:2379\"]}\n", "6:3", `did you mean "etcd.endpoints"?`},
		{"batch too long", "cluster:\n  name: a\n  batch_interval: 2s\n  etcd: {endpoints: [\"http://127.0.0.1:2379\"]}\n", "6:19", "batch_interval: 2s is too long"},
		{"node ttl too short", "cluster:\n  name: a\n  node_ttl: 1s\n  etcd: {endpoints: [\"http://127.0.0.1:2379\"]}\n", "6:13", "node_ttl: 1s is too short"},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			_, err := Parse("h.yaml", []byte(clusterYAML(tt.yaml)))
			var errs Errors
			if !errors.As(err, &errs) || len(errs) == 0 {
				t.Fatalf("Parse = %v, want errors", err)
			}
			got := errs[0].Error()
			if !strings.HasPrefix(got, "h.yaml:"+tt.pos+": ") || !strings.Contains(got, tt.msg) {
				t.Errorf("error = %q, want at %s containing %q (all: %v)", got, tt.pos, tt.msg, err)
			}
		})
	}
}

func TestClusterGood(t *testing.T) {
	defer func(f func() (string, error)) { osHostname = f }(osHostname)
	osHostname = func() (string, error) { return "lb7.example.net", nil }

	c, err := Parse("h.yaml", []byte(svc("")))
	if err != nil || c.Cluster != nil {
		t.Fatalf("no cluster section: Cluster = %v, err %v; want nil", c.Cluster, err)
	}
	c, err = Parse("h.yaml", []byte(clusterYAML("cluster:\n  name: edge-a\n  etcd: {endpoints: [\"http://198.18.60.1:2379\", \"https://[2001:2::1]:2379\"]}\n")))
	if err != nil {
		t.Fatal(err)
	}
	want := &Cluster{
		Name: "edge-a", Node: "lb7",
		Etcd:          Etcd{Endpoints: []string{"http://198.18.60.1:2379", "https://[2001:2::1]:2379"}, Prefix: "/handoff", DialTimeout: DefaultEtcdDialTimeout},
		BatchInterval: DefaultBatchInterval, RefreshInterval: DefaultRefreshInterval, NodeTTL: DefaultNodeTTL,
	}
	if !reflect.DeepEqual(c.Cluster, want) {
		t.Errorf("defaults: got %+v, want %+v", c.Cluster, want)
	}
	c, err = Parse("h.yaml", []byte(clusterYAML(`cluster:
  name: edge-a
  node: lb1
  batch_interval: 20ms
  refresh_interval: 1m
  node_ttl: 5s
  etcd:
    endpoints: ["https://198.18.60.1:2379"]
    prefix: /lb/
    tls: {ca_file: /ca, cert_file: /c, key_file: /k}
    dial_timeout: 500ms
`)))
	if err != nil {
		t.Fatal(err)
	}
	want = &Cluster{
		Name: "edge-a", Node: "lb1",
		Etcd:          Etcd{Endpoints: []string{"https://198.18.60.1:2379"}, Prefix: "/lb", CAFile: "/ca", CertFile: "/c", KeyFile: "/k", DialTimeout: 500 * time.Millisecond},
		BatchInterval: 20 * time.Millisecond, RefreshInterval: time.Minute, NodeTTL: 5 * time.Second,
	}
	if !reflect.DeepEqual(c.Cluster, want) {
		t.Errorf("set: got %+v, want %+v", c.Cluster, want)
	}
}
