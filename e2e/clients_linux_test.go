package e2e

// Real clients against every classifier, in both modes and both families:
// each client's first request must succeed, and in kernel mode the backend
// must see the client's own address on every connection, the first one
// included.

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/handoff-lb/handoff/internal/testenv"
)

// A client tool makes one request to url from src, in the client
// namespace, and returns the response body. TLS URLs name a.example,
// which the namespace's hosts file resolves to the VIP, and trust ca.
type clientTool struct {
	name string
	tls  bool // speaks HTTPS too
	get  func(ctx context.Context, l *clientsLab, src netip.Addr, url string) (string, error)
}

// python3 is Debian's interpreter, whose python3-requests the test
// command installs (a pyenv's may lack it).
const python3 = "/usr/bin/python3"

var clientTools = []clientTool{
	{"curl", true, func(ctx context.Context, l *clientsLab, src netip.Addr, url string) (string, error) {
		return l.run(ctx, "curl", "-sS", "--fail", "--max-time", "5", "--interface", src.String(), "--cacert", l.ca, url)
	}},
	// --tries=1: a request that fails must not be retried by wget itself.
	{"wget", true, func(ctx context.Context, l *clientsLab, src netip.Addr, url string) (string, error) {
		return l.run(ctx, "wget", "-qO-", "--tries=1", "--timeout=5", "--bind-address="+src.String(), "--ca-certificate="+l.ca, url)
	}},
	{"python3 urllib", true, func(ctx context.Context, l *clientsLab, src netip.Addr, url string) (string, error) {
		return l.run(ctx, python3, "-c", pyUrllib, src.String(), url, l.ca)
	}},
	{"python3 requests", true, func(ctx context.Context, l *clientsLab, src netip.Addr, url string) (string, error) {
		return l.run(ctx, python3, "-c", pyRequests, src.String(), url, l.ca)
	}},
	{"Go net/http", true, func(ctx context.Context, l *clientsLab, src netip.Addr, url string) (string, error) {
		tr := &http.Transport{
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				if strings.HasPrefix(addr, "a.example:") {
					addr = net.JoinHostPort(l.fam.vip.String(), strings.TrimPrefix(addr, "a.example:"))
				}
				return l.Client.DialFrom(ctx, src, "tcp", addr)
			},
			TLSClientConfig:   &tls.Config{RootCAs: l.roots},
			DisableKeepAlives: true,
		}
		defer tr.CloseIdleConnections()
		req, err := http.NewRequestWithContext(ctx, "GET", url, nil)
		if err != nil {
			return "", err
		}
		resp, err := (&http.Client{Transport: tr}).Do(req)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err == nil && resp.StatusCode != 200 {
			err = fmt.Errorf("status %s", resp.Status)
		}
		return string(b), err
	}},
	{"openssl s_client", true, func(ctx context.Context, l *clientsLab, src netip.Addr, url string) (string, error) {
		if !strings.HasPrefix(url, "https://") {
			return "", errSkipTool
		}
		hostport := strings.TrimSuffix(strings.TrimPrefix(url, "https://"), "/")
		cmd := l.cmd(ctx, "openssl", "s_client", "-quiet", "-connect", hostport, "-servername", "a.example",
			"-bind", net.JoinHostPort(src.String(), "0"), "-CAfile", l.ca, "-verify_return_error")
		cmd.Stdin = strings.NewReader("GET / HTTP/1.0\r\nHost: a.example\r\n\r\n")
		out, err := cmd.Output()
		if err != nil {
			return string(out), fmt.Errorf("openssl s_client: %w", err)
		}
		_, body, ok := strings.Cut(string(out), "\r\n\r\n")
		if !ok {
			return string(out), fmt.Errorf("openssl s_client: no HTTP response in %q", out)
		}
		return body, nil
	}},
}

// errSkipTool says that a tool does not speak a service's protocol.
var errSkipTool = fmt.Errorf("tool does not apply")

// The Python clients bind the source address, as the shell tools do.
const pyUrllib = `import functools, http.client, ssl, sys, urllib.request
src, url, ca = sys.argv[1], sys.argv[2], sys.argv[3]
class H(urllib.request.HTTPHandler):
    def http_open(self, req):
        return self.do_open(functools.partial(http.client.HTTPConnection, source_address=(src, 0)), req)
class S(urllib.request.HTTPSHandler):
    def https_open(self, req):
        return self.do_open(functools.partial(http.client.HTTPSConnection, source_address=(src, 0), context=ssl.create_default_context(cafile=ca)), req)
sys.stdout.write(urllib.request.build_opener(H, S).open(url, timeout=5).read().decode())
`

const pyRequests = `import sys, requests
from requests.adapters import HTTPAdapter
src, url, ca = sys.argv[1], sys.argv[2], sys.argv[3]
class A(HTTPAdapter):
    def init_poolmanager(self, *a, **kw):
        kw["source_address"] = (src, 0)
        return super().init_poolmanager(*a, **kw)
s = requests.Session()
s.mount("http://", A())
s.mount("https://", A())
r = s.get(url, timeout=5, verify=ca)
r.raise_for_status()
sys.stdout.write(r.text)
`

// clientService is a service of the clients scenario.
type clientService struct {
	name, classify string
	port           uint16
	https          bool
	fields         []string
}

var clientServices = []clientService{
	{"src", "source", 8080, false, nil},
	{"pay", "payload", 8081, false, []string{`payload: {pattern: '^[A-Z]+ /(\w*)', max_bytes: 256, timeout: 2s}`}},
	{"host", "http-host", 8082, false, nil},
	{"sni", "sni", 8443, true, nil},
}

// clientsLab is one mode's and family's lab: two backend hosts serving
// HTTP on 80 and HTTPS on 443, recording whom they see.
type clientsLab struct {
	*lab
	fam    family
	ca     string // the CA file the clients trust
	roots  *x509.CertPool
	kernel bool
	seen   *backendLog
}

// backendLog records, per backend, the client addresses of requests.
type backendLog struct {
	mu   sync.Mutex
	seen map[string][]string
}

func (b *backendLog) add(name, addr string) {
	b.mu.Lock()
	b.seen[name] = append(b.seen[name], addr)
	b.mu.Unlock()
}

func (l *clientsLab) cmd(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", l.Client.Name, name}, args...)...)
}

func (l *clientsLab) run(ctx context.Context, name string, args ...string) (string, error) {
	out, err := l.cmd(ctx, name, args...).Output()
	if ee, ok := err.(*exec.ExitError); ok {
		err = fmt.Errorf("%s: %w: %s", name, err, strings.TrimSpace(string(ee.Stderr)))
	}
	return string(out), err
}

func (l *clientsLab) url(s clientService) string {
	if s.https {
		return fmt.Sprintf("https://a.example:%d/", s.port)
	}
	return "http://" + netip.AddrPortFrom(l.fam.vip, s.port).String() + "/x"
}

// newClientsLab starts the backends and a daemon in mode serving
// clientServices on fam's VIP.
func newClientsLab(t *testing.T, mode string, fam family, clients int) *clientsLab {
	t.Helper()
	for _, tool := range []string{"curl", "wget", "openssl", python3} {
		if _, err := exec.LookPath(tool); err != nil {
			testenv.Skip(t, tool+" is not installed (scripts/test.sh installs it)")
		}
	}
	if err := exec.Command(python3, "-c", "import requests").Run(); err != nil {
		testenv.Skip(t, "python3-requests is not installed (scripts/test.sh installs it)")
	}
	l := &clientsLab{lab: newLab(t, 2, clients), fam: fam, kernel: mode == "kernel", roots: x509.NewCertPool(), seen: &backendLog{seen: map[string][]string{}}}
	cert := testCert(t)
	l.roots.AddCert(cert.Leaf)
	l.ca = filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(l.ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Leaf.Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	l.resolve(t, "a.example", fam.vip)
	for i, ns := range l.Backends {
		name := fmt.Sprintf("be%d", i)
		h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			ap, _ := netip.ParseAddrPort(r.RemoteAddr)
			l.seen.add(name, ap.Addr().Unmap().String())
			fmt.Fprintf(w, "%s %s\n", name, ap.Addr().Unmap())
		})
		for _, port := range []uint16{80, 443} {
			ln := ns.Listen(t, "tcp", netip.AddrPortFrom(fam.backend(i), port).String())
			srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
			if port == 443 {
				ln = tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{cert}})
			}
			go srv.Serve(ln)
			t.Cleanup(func() { srv.Close() })
		}
	}
	cfg := daemonConfig{mode: mode}
	for _, s := range clientServices {
		port := uint16(80)
		if s.https {
			port = 443
		}
		fields := append([]string{"classify: " + s.classify, "client_ttl: 10m", "health: {check: none}", "balance: maglev"}, s.fields...)
		cfg.services = append(cfg.services, service{s.name, netip.AddrPortFrom(fam.vip, s.port), fields, backends(fam, port, "be0", "be1")})
	}
	startDaemon(t, l.LB, writeConfig(t, cfg), netip.AddrPortFrom(fam.vip, clientServices[0].port), "--mode", mode)
	for _, s := range clientServices[1:] {
		waitListen(t, l.LB, netip.AddrPortFrom(fam.vip, s.port))
	}
	return l
}

// resolve makes name resolve to addr in the client namespace: `ip netns
// exec` mounts /etc/netns/<namespace>/hosts over /etc/hosts.
func (l *clientsLab) resolve(t *testing.T, name string, addr netip.Addr) {
	t.Helper()
	dir := filepath.Join("/etc/netns", l.Client.Name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.WriteFile(filepath.Join(dir, "hosts"), []byte(fmt.Sprintf("127.0.0.1 localhost\n%s %s\n", addr, name)), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestRealClients: curl, wget (without its own retries), python3's urllib
// and requests, Go's net/http and openssl s_client each make the first
// request of a new client to a source-, payload-, Host- and SNI-classified
// service, then a second one. Every request succeeds. In kernel mode the
// backend sees the client's own address on both (the first connection's
// SYN held in the kernel, or proxied from the client's address), and the
// second goes to the first one's backend.
func TestRealClients(t *testing.T) {
	for _, mode := range []string{"kernel", "userspace"} {
		for _, fam := range families {
			t.Run(mode+"/"+fam.name, func(t *testing.T) {
				l := newClientsLab(t, mode, fam, 1)
				for _, s := range clientServices {
					for _, tool := range clientTools {
						if s.https && !tool.tls {
							continue
						}
						name := s.name + "/" + tool.name
						src := l.addClients(t, fam, 1)[0]
						var backend string
						for i, which := range []string{"first", "second"} {
							ctx, cancel := context.WithTimeout(context.Background(), 8*time.Second)
							body, err := tool.get(ctx, l, src, l.url(s))
							cancel()
							if err == errSkipTool {
								break
							}
							if err != nil {
								t.Errorf("%s: %s request from %s failed: %v", name, which, src, err)
								break
							}
							a := parseAnswer(body)
							if i == 0 {
								backend = a.backend
							} else if a.backend != backend {
								t.Errorf("%s: second request reached %s, the first %s", name, a.backend, backend)
							}
							want := fam.lbBack.String()
							if l.kernel {
								want = src.String()
							}
							if a.seen != want {
								t.Errorf("%s: %s request: the backend saw %s, want %s", name, which, a.seen, want)
							}
						}
					}
				}
			})
		}
	}
}
