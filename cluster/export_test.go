package cluster

import (
	"context"

	"github.com/sirupsen/logrus"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// EtcdPins reads the pins etcd holds for cluster name under prefix, as a
// host reading the cluster's state resolves them: "service/client" →
// backend ("" for a tombstone).
func EtcdPins(ctx context.Context, cli *clientv3.Client, prefix, name string) (map[string]string, error) {
	n := &Node{cli: cli, k: newKeys(prefix, name), log: logrus.NewEntry(logrus.StandardLogger())}
	m := newestPins{}
	_, err := n.rangeAt(ctx, n.k.root, clientv3.GetPrefixRangeEnd(n.k.root), 0, syncPages, func(kvs []*mvccpb.KeyValue) {
		for _, kv := range kvs {
			n.collectPins(event{rev: kv.ModRevision, key: string(kv.Key), value: kv.Value}, m)
		}
	})
	out := make(map[string]string, len(m))
	for pk, pe := range m {
		out[pk.service+"/"+pk.client.String()] = pe.v.Backend
	}
	return out, err
}
