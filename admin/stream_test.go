package admin

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"reflect"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/handoff-lb/handoff/balancer"
)

// manyClients yields n generated pins without holding them, sampling the
// heap as it goes.
type manyClients struct {
	*fakeController
	n int
	// firstRead is closed by the reader when it decoded the first pin;
	// the fake waits for it after streamAhead pins, which proves the
	// server writes as it goes.
	firstRead chan struct{}
	sample    func()
}

const streamAhead = 20000

func (m manyClients) Clients(ctx context.Context, service, backend string, limit int, fn func(balancer.ClientPin) error) error {
	p := balancer.ClientPin{Backend: "be1", ExpiresIn: 1799.5}
	b := make([]byte, 0, 64)
	for i := range m.n {
		if i == streamAhead {
			select {
			case <-m.firstRead:
			case <-time.After(20 * time.Second):
				panic("the reader saw no pin after " + strconv.Itoa(streamAhead) + " were yielded: the server buffers")
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		if i%50000 == 0 {
			m.sample()
		}
		// 10.x.y.z: distinct for up to 16M pins.
		b = b[:0]
		b = strconv.AppendInt(append(b, "10."...), int64(i>>16), 10)
		b = strconv.AppendInt(append(b, '.'), int64(i>>8&0xff), 10)
		b = strconv.AppendInt(append(b, '.'), int64(i&0xff), 10)
		p.Client = string(b)
		p.Key = p.Client
		if err := fn(p); err != nil {
			return err
		}
	}
	return nil
}

// A million pins stream with flat memory: nothing collects them, on the
// server or in this reader. Serialised, they are about 90 MB of JSON, so
// any buffering of the whole answer blows well past the bound.
func TestClientsStreamMillion(t *testing.T) {
	n := 1_000_000
	if testing.Short() {
		n = 200_000
	}
	const bound = 24 << 20 // far below the ~90 MB a buffered answer needs

	var (
		mu   sync.Mutex
		base uint64
		peak uint64
	)
	sample := func() {
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		mu.Lock()
		peak = max(peak, ms.HeapInuse)
		mu.Unlock()
	}
	s, _ := newTestServer(t, false, Options{})
	first := make(chan struct{})
	s.ctl = manyClients{fakeController: newFake(), n: n, firstRead: first, sample: sample}
	s.handler = s.routes(Options{})
	srv := httptest.NewServer(s)
	defer srv.Close()

	var size int64
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	base = ms.HeapInuse

	resp, err := http.Get(srv.URL + "/api/v1/services/web/clients")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	// The server writes one pin per line; read them without collecting,
	// and decode every 10000th and the last in full.
	rd := bufio.NewReaderSize(resp.Body, 64<<10)
	line := func() []byte {
		b, err := rd.ReadSlice('\n')
		if err != nil {
			t.Fatalf("after %d bytes: %v", size, err)
		}
		size += int64(len(b))
		return bytes.TrimSuffix(b, []byte("\n"))
	}
	if b := line(); string(b) != "[" {
		t.Fatalf("first line %q, want [", b)
	}
	var (
		count int
		last  balancer.ClientPin
	)
	for {
		b := line()
		if string(b) == "]" {
			break
		}
		b = bytes.TrimSuffix(b, []byte(","))
		if count == 0 {
			close(first)
		}
		if count%10000 == 0 || count == n-1 {
			if err := json.Unmarshal(b, &last); err != nil {
				t.Fatalf("pin %d: %q: %v", count, b, err)
			}
		}
		count++
		if count%50000 == 0 {
			sample()
		}
	}
	if _, err := rd.ReadByte(); err != io.EOF {
		t.Errorf("data after the closing ]: %v", err)
	}
	sample()
	if count != n {
		t.Fatalf("read %d pins, want %d", count, n)
	}
	if want := "10." + strconv.Itoa((n-1)>>16) + "." + strconv.Itoa((n-1)>>8&0xff) + "." + strconv.Itoa((n-1)&0xff); last.Client != want || last.Backend != "be1" || last.ExpiresIn != 1799.5 {
		t.Errorf("last pin %+v, want client %s", last, want)
	}
	mu.Lock()
	growth := int64(peak) - int64(base)
	mu.Unlock()
	t.Logf("%d pins, %d MB of JSON, heap in use grew by at most %.1f MB", count, size>>20, float64(growth)/(1<<20))
	if n == 1_000_000 && size < 3*bound {
		t.Fatalf("the answer is only %d bytes: the bound %d would not catch buffering", size, bound)
	}
	if growth > bound {
		t.Fatalf("heap in use grew by %d MB while streaming, want under %d MB", growth>>20, bound>>20)
	}
}

// samePin checks that appendPin(p) decodes to what json.Marshal(p) does:
// the same fields (a field added to ClientPin fails here) and values.
func samePin(t *testing.T, p balancer.ClientPin) {
	t.Helper()
	got := appendPin(nil, p)
	var g, w map[string]any
	if err := json.Unmarshal(got, &g); err != nil {
		t.Fatalf("appendPin(%+v) = %s: not JSON: %v", p, got, err)
	}
	if math.IsNaN(p.ExpiresIn) || math.IsInf(p.ExpiresIn, 0) {
		p.ExpiresIn = 0 // json.Marshal refuses them; appendPin writes 0
	}
	want, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(want, &w); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(g, w) {
		t.Fatalf("appendPin(%+v)\n= %s\nwant %s", p, got, want)
	}
}

func TestAppendPin(t *testing.T) {
	for _, p := range []balancer.ClientPin{
		{Client: "198.18.0.5", Backend: "be1", Key: "198.18.0.5", ExpiresIn: 1799.5},
		{Client: "2001:db8::5", Backend: "be-2", Key: "manual"},
		{Key: `quote " backslash \ slash /`},
		{Key: "ctl \x00\x01\x1f\x7f\n\r\t end"},
		{Key: "bad utf-8 \xff\xfe and a cut rune \xe2\x82"},
		{Key: "é ü 漢字 \u2028 \u2029 <script>&amp;"},
		{ExpiresIn: 1e-7},
		{ExpiresIn: 1e22},
		{ExpiresIn: -3},
		{ExpiresIn: 123456789.125},
		{ExpiresIn: math.NaN()},
		{ExpiresIn: math.Inf(1)},
	} {
		samePin(t, p)
	}
}

func FuzzAppendPin(f *testing.F) {
	f.Add("198.18.0.5", "be1", "station-7", 30.5)
	f.Add("", "", "\x00\xff\"\\", 0.0)
	f.Fuzz(func(t *testing.T, client, backend, key string, expires float64) {
		samePin(t, balancer.ClientPin{Client: client, Backend: backend, Key: key, ExpiresIn: expires})
	})
}
