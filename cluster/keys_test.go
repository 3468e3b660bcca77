package cluster

import (
	"net/netip"
	"testing"
)

func TestPinValue(t *testing.T) {
	for _, v := range []pinValue{
		{Backend: "be1", Key: "src=198.18.0.7", Expires: 1767225600123, Node: "lb1", Written: 1767223800123},
		{Backend: "b-2_x", Key: "payload=station 7 with spaces", Expires: 0, Node: "lb2.example", Written: 5},
		{Backend: "be1", Key: "", Node: "n", Written: 1},
	} {
		got, err := decodePin(v.encode())
		if err != nil || got != v {
			t.Errorf("decode(encode(%+v)) = %+v, %v", v, got, err)
		}
	}
	for _, bad := range []string{"", "h1", "h1 be1", "h1 be1 x 1 n k", "h1 be1 1 1", "{\"b\":\"be1\"}", "h1  1 1 n k"} {
		if _, err := decodePin([]byte(bad)); err == nil {
			t.Errorf("decodePin(%q) accepted", bad)
		}
	}
}

func TestKeys(t *testing.T) {
	k := newKeys("/handoff/", "edge-a")
	c := netip.MustParseAddr("2001:2::7")
	key := k.pin("web", c)
	if key != "/handoff/edge-a/pins/web/2001:2::7" {
		t.Errorf("pin key = %q", key)
	}
	if pk, ok := k.parsePin(key); !ok || pk != (pinKey{"web", c}) {
		t.Errorf("parsePin(%q) = %v, %v", key, pk, ok)
	}
	if _, ok := k.parsePin("/handoff/edge-a/pins/web/not-an-ip"); ok {
		t.Error("parsePin accepted a key without an address")
	}
}

func TestPage(t *testing.T) {
	k := newKeys("/handoff", "edge-a")
	key := k.page("lb1", 1767225600123456789, 42)
	if node, ok := k.pageNode(key); !ok || node != "lb1" {
		t.Errorf("pageNode(%q) = %q, %v", key, node, ok)
	}
	if _, ok := k.pageNode(k.pin("web", netip.MustParseAddr("198.18.0.7"))); ok {
		t.Error("pageNode accepted a pin key")
	}
	in := []pageEntry{
		{pk: pinKey{"web", netip.MustParseAddr("198.18.0.7")}, v: pinValue{Backend: "be1", Key: "src=198.18.0.7", Expires: 1767225600123, Written: 1767223800123}},
		{pk: pinKey{"six", netip.MustParseAddr("2001:2::7")}, del: true, v: pinValue{Expires: 1767225600123, Written: 5}},
		{pk: pinKey{"web", netip.MustParseAddr("198.18.0.8")}, v: pinValue{Backend: "b-2_x", Key: "payload=station 7 with spaces", Expires: 9, Written: 1}},
		{pk: pinKey{"web", netip.MustParseAddr("198.18.0.9")}, v: pinValue{Backend: "be1", Key: "odd\nkey", Expires: 9, Written: 1}},
		{pk: pinKey{"web", netip.MustParseAddr("198.18.0.10")}, v: pinValue{Backend: "be1", Key: `"quoted"`, Expires: 9, Written: 1}},
		{pk: pinKey{"web", netip.MustParseAddr("198.18.0.11")}, v: pinValue{Backend: "be1", Expires: 9, Written: 1}},
	}
	var out []pageEntry
	if err := decodePage(encodePage(in), "lb1", func(e pageEntry) { out = append(out, e) }); err != nil {
		t.Fatal(err)
	}
	for i := range in {
		in[i].v.Node = "lb1"
	}
	if len(out) != len(in) {
		t.Fatalf("decoded %d entries, want %d", len(out), len(in))
	}
	for i := range in {
		if out[i] != in[i] {
			t.Errorf("entry %d = %+v, want %+v", i, out[i], in[i])
		}
	}
	for _, bad := range []string{
		"", "h1 be1 1 1 n k", "h2\np web 198.18.0.7 be1 1 1 k", // no final newline
		"h2\nx web 198.18.0.7 be1 1 1 k\n", "h2\np web 198.18.0.7 be1 1\n", "h2\np web nope be1 1 1 k\n",
		"h2\np web fe80::1%eth0 be1 1 1 k\n", "h2\nd web 198.18.0.7 1 1 extra\n", "h2\nd web 198.18.0.7 1\n",
		"h2\np web 198.18.0.7 be1 x 1 k\n", "h2\np web 198.18.0.7 be1 1 1 \"unterminated\n", "h2\np  198.18.0.7 be1 1 1 k\n",
	} {
		if err := decodePage([]byte(bad), "lb1", func(pageEntry) {}); err == nil {
			t.Errorf("decodePage(%q) accepted", bad)
		}
	}
}

// FuzzDecodePage: any bytes a page key holds in etcd decode without a
// panic, and what decodes encodes back to the same entries.
func FuzzDecodePage(f *testing.F) {
	f.Add([]byte("h2\np web 198.18.0.7 be1 1767225600123 1767223800123 src=198.18.0.7\nd six 2001:2::7 9 5\n"))
	f.Add([]byte("h2\np web ::ffff:198.18.0.7 be1 1 1 \"a\\x00b\"\n"))
	f.Add([]byte("h2\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		var got []pageEntry
		if err := decodePage(b, "n", func(e pageEntry) { got = append(got, e) }); err != nil {
			return
		}
		var again []pageEntry
		if err := decodePage(encodePage(got), "n", func(e pageEntry) { again = append(again, e) }); err != nil {
			t.Fatalf("re-encoded page does not decode: %v", err)
		}
		if len(again) != len(got) {
			t.Fatalf("%d entries after re-encoding, want %d", len(again), len(got))
		}
		for i := range got {
			if again[i] != got[i] {
				t.Fatalf("entry %d = %+v after re-encoding, want %+v", i, again[i], got[i])
			}
		}
	})
}
