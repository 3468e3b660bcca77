package config

import (
	"fmt"
	"net/url"
	"os"
	"regexp"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Cluster makes several handoff hosts share their pins and runtime state
// through etcd (DESIGN.md §8). The zero value (Config.Cluster nil) is one
// host on its own.
type Cluster struct {
	Name string // the cluster's name: one key space in etcd
	Node string // this host's name; defaults to the host name
	Etcd Etcd
	// BatchInterval is how long a pin waits for others to share its etcd
	// transaction.
	BatchInterval time.Duration
	// RefreshInterval is how often pins the kernel refreshed (a client
	// connected through this host) are written again with their new
	// expiry.
	RefreshInterval time.Duration
	// NodeTTL is the lease of this host's liveness key: the other hosts
	// see it gone that long after it died.
	NodeTTL time.Duration
}

// Etcd says how to reach etcd.
type Etcd struct {
	Endpoints   []string // URLs, http:// or https://
	Prefix      string   // key prefix, starts with '/'
	CAFile      string   // TLS: trust these CAs ("" = the system's, when an endpoint is https)
	CertFile    string   // TLS client certificate (with KeyFile)
	KeyFile     string
	DialTimeout time.Duration
}

// Cluster defaults.
const (
	DefaultEtcdPrefix       = "/handoff"
	DefaultEtcdDialTimeout  = 2 * time.Second
	DefaultBatchInterval    = 5 * time.Millisecond
	DefaultRefreshInterval  = 10 * time.Second
	DefaultNodeTTL          = 10 * time.Second
	maxClusterBatchInterval = time.Second
)

var (
	clusterKeys = []string{"name", "node", "etcd", "batch_interval", "refresh_interval", "node_ttl"}
	etcdKeys    = []string{"endpoints", "prefix", "tls", "dial_timeout"}
	tlsKeys     = []string{"ca_file", "cert_file", "key_file"}
	clusterHint = map[string]string{"endpoints": "etcd.endpoints", "prefix": "etcd.prefix", "tls": "etcd.tls", "dial_timeout": "etcd.dial_timeout"}

	// clusterNameRE bounds cluster and node names: they go into etcd keys.
	clusterNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)
)

// osHostname is the node name's default; a variable for tests.
var osHostname = os.Hostname

// cluster reads the cluster section; nil when absent.
func (p *parser) cluster(f *fields) *Cluster {
	if !f.has("cluster") {
		return nil
	}
	cf := p.mapping(f.vals["cluster"], "", "cluster", clusterKeys, clusterHint)
	if cf.bad {
		return nil
	}
	c := &Cluster{}
	var n *yaml.Node
	if c.Name, n = cf.str("name", ""); n == nil {
		cf.required("name")
	} else if !clusterNameRE.MatchString(c.Name) {
		cf.errorf(n, "name", "%q: want letters, digits, '.', '_' or '-', at most 63, starting with a letter or digit", c.Name)
	}
	if c.Node, n = cf.str("node", ""); n != nil {
		if !clusterNameRE.MatchString(c.Node) {
			cf.errorf(n, "node", "%q: want letters, digits, '.', '_' or '-', at most 63, starting with a letter or digit", c.Node)
		}
	} else {
		h, err := osHostname()
		h, _, _ = strings.Cut(h, ".")
		if err != nil || !clusterNameRE.MatchString(h) {
			cf.errorf(cf.pos("node"), "node", "the host name %q cannot name this node; set cluster.node", h)
		}
		c.Node = h
	}
	c.BatchInterval, n = cf.positive("batch_interval", DefaultBatchInterval)
	if n != nil && c.BatchInterval > maxClusterBatchInterval {
		cf.errorf(n, "batch_interval", "%s is too long: at most %v (pins wait that long to reach the other hosts)", n.Value, maxClusterBatchInterval)
	}
	c.RefreshInterval, _ = cf.positive("refresh_interval", DefaultRefreshInterval)
	c.NodeTTL, n = cf.positive("node_ttl", DefaultNodeTTL)
	if n != nil && c.NodeTTL < 2*time.Second {
		cf.errorf(n, "node_ttl", "%s is too short: at least 2s (etcd leases count whole seconds)", n.Value)
	}

	if !cf.has("etcd") {
		cf.required("etcd")
		return c
	}
	ef := cf.sub("etcd", etcdKeys)
	items, list := ef.list("endpoints")
	switch {
	case !ef.has("endpoints"):
		ef.required("endpoints")
	case list != nil && len(items) == 0:
		ef.errorf(list, "endpoints", "empty; name at least one etcd endpoint")
	}
	for i, it := range items {
		if it.Kind != yaml.ScalarNode {
			p.at(it, "", fmt.Sprintf("cluster.etcd.endpoints[%d]", i), "expected a URL, found %s", describe(it))
			continue
		}
		if err := checkEndpoint(it.Value); err != nil {
			p.at(it, "", fmt.Sprintf("cluster.etcd.endpoints[%d]", i), "%q: %v", it.Value, err)
			continue
		}
		c.Etcd.Endpoints = append(c.Etcd.Endpoints, it.Value)
	}
	c.Etcd.Prefix, n = ef.str("prefix", DefaultEtcdPrefix)
	if n != nil && !strings.HasPrefix(c.Etcd.Prefix, "/") {
		ef.errorf(n, "prefix", "%q: want a path starting with / (e.g. /handoff)", c.Etcd.Prefix)
	}
	c.Etcd.Prefix = strings.TrimSuffix(c.Etcd.Prefix, "/")
	c.Etcd.DialTimeout, _ = ef.positive("dial_timeout", DefaultEtcdDialTimeout)
	if ef.has("tls") {
		tf := ef.sub("tls", tlsKeys)
		var cn, kn *yaml.Node
		c.Etcd.CAFile, _ = tf.str("ca_file", "")
		c.Etcd.CertFile, cn = tf.str("cert_file", "")
		c.Etcd.KeyFile, kn = tf.str("key_file", "")
		if (cn == nil) != (kn == nil) {
			if cn == nil {
				tf.errorf(kn, "key_file", "needs cert_file too")
			} else {
				tf.errorf(cn, "cert_file", "needs key_file too")
			}
		}
	}
	return c
}

// checkEndpoint accepts http://host:port and https://host:port.
func checkEndpoint(s string) error {
	u, err := url.Parse(s)
	switch {
	case err != nil || u.Scheme != "http" && u.Scheme != "https":
		return fmt.Errorf("want http://HOST:PORT or https://HOST:PORT")
	case u.Host == "" || u.Port() == "":
		return fmt.Errorf("no port; write %s://HOST:2379", u.Scheme)
	case u.Path != "" && u.Path != "/":
		return fmt.Errorf("has a path; an endpoint is only scheme://host:port")
	}
	return nil
}
