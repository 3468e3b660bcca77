package admin

import (
	"encoding/json"
	"io"
	"maps"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/sirupsen/logrus"
)

// FuzzAPIBodies sends arbitrary bodies, path segments and queries to every
// admin API route that takes them, over a fake engine: the server never
// panics, never answers 500 (the fake fails nothing), and every error is
// a JSON object with an "error" string.
func FuzzAPIBodies(f *testing.F) {
	f.Add(uint8(0), "web", "", []byte(`{"client":"198.18.0.9","backend":"be1"}`))
	f.Add(uint8(1), "web", "", []byte(`{"name":"be3","address":"198.19.1.13:80","weight":2,"pool":"default","ttl":"30s"}`))
	f.Add(uint8(1), "web", "", []byte(`{"name":"be3","address":"[2001:2::1]:80","ttl":"-1s","weight":1e99}`))
	f.Add(uint8(2), "web", "migrate=1&undo=1", []byte(``))
	f.Add(uint8(3), "web", "backend=be1&limit=-1", []byte(``))
	f.Add(uint8(4), "198.18.0.9", "", []byte(`{}`))
	f.Add(uint8(0), "web", "", []byte(`{"client":"198.18.0.9","backend":"be1"}{"x":1}`))
	f.Add(uint8(0), "we%00b", "", []byte("\xff\xfe"))
	l := logrus.New()
	l.Out = io.Discard
	s, fk := newTestServer(f, false, Options{Logger: logrus.NewEntry(l)})
	h := s.handler
	fresh := newFake()
	f.Fuzz(func(t *testing.T, route uint8, seg, query string, body []byte) {
		fk.mu.Lock()
		fk.calls, fk.pins = nil, maps.Clone(fresh.pins)
		fk.mu.Unlock()
		seg = url.PathEscape(seg)
		var method, target string
		switch route % 7 {
		case 0:
			method, target = "POST", "/api/v1/services/"+seg+"/pins"
		case 1:
			method, target = "POST", "/api/v1/services/"+seg+"/backends"
		case 2:
			method, target = "POST", "/api/v1/services/web/backends/"+seg+"/drain"
		case 3:
			method, target = "GET", "/api/v1/services/"+seg+"/clients"
		case 4:
			method, target = "DELETE", "/api/v1/services/web/pins/"+seg
		case 5:
			method, target = "DELETE", "/api/v1/services/web/backends/"+seg
		case 6:
			method, target = "POST", "/api/v1/services/"+seg+"/close"
		}
		if query != "" {
			target += "?" + query
		}
		if u, err := url.ParseRequestURI(target); err != nil || u.Fragment != "" || strings.ContainsAny(target, " \t") {
			return // no HTTP client can send it
		}
		w := do(h, method, target, string(body))
		if w.Code >= 500 {
			t.Fatalf("%s %s with %q: status %d: %s", method, target, body, w.Code, w.Body)
		}
		if w.Code >= 400 && w.Code != http.StatusMethodNotAllowed && w.Code != http.StatusNotFound {
			var e struct {
				Error *string `json:"error"`
			}
			if err := json.Unmarshal(w.Body.Bytes(), &e); err != nil || e.Error == nil {
				t.Fatalf("%s %s with %q: status %d with a body that is no JSON error: %q", method, target, body, w.Code, w.Body)
			}
		}
	})
}
