package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestValidateOutputs: validate's plain, quiet and JSON outputs for a valid
// file and for one with two errors (a pool without backends among them,
// which only Load refuses).
func TestValidateOutputs(t *testing.T) {
	t.Setenv("HANDOFF_CONFIG", "")
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(good, []byte("services:\n  - {name: web, listen: 127.0.0.1:80, backends: [{name: a, address: 198.19.1.11:81}]}\n"), 0o644)
	os.WriteFile(bad, []byte("mode: fast\nservices:\n  - {name: web, listen: 127.0.0.1:80}\n"), 0o644)

	out, errOut, code := runCtl(t, "validate", "-c", good)
	if code != 0 || out != good+": ok (1 services)\n" || errOut != "" {
		t.Errorf("plain: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	out, errOut, code = runCtl(t, "validate", "-q", "-c", good)
	if code != 0 || out != "" || errOut != "" {
		t.Errorf("-q: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	out, errOut, code = runCtl(t, "validate", "-q", "-c", bad)
	if code != 1 || out != "" || strings.Count(errOut, bad+":") != 2 {
		t.Errorf("-q, bad: exit %d, stdout %q, stderr %q", code, out, errOut)
	}

	for _, tc := range []struct {
		file     string
		ok       bool
		services int
		errs     []string // line:column message-prefix
	}{
		{good, true, 1, nil},
		{bad, false, 0, []string{`1:7 mode: "fast" is not one of`, `3:5 service "web": backends: none`}},
	} {
		out, errOut, code := runCtl(t, "validate", "--json", "-c", tc.file)
		var res validateResult
		if err := json.Unmarshal([]byte(out), &res); err != nil {
			t.Fatalf("--json %s: %v in %q (stderr %q)", tc.file, err, out, errOut)
		}
		if (code == 0) != tc.ok || res.OK != tc.ok || res.File != tc.file || res.Services != tc.services || len(res.Errors) != len(tc.errs) || errOut != "" {
			t.Errorf("--json %s: exit %d, %+v, stderr %q", tc.file, code, res, errOut)
			continue
		}
		for i, e := range res.Errors {
			pos, msg, _ := strings.Cut(tc.errs[i], " ")
			if got := strings.Join([]string{itoa(e.Line), itoa(e.Column)}, ":"); got != pos || !strings.HasPrefix(e.Message, msg) || e.File != tc.file {
				t.Errorf("error %d: %+v, want %s", i, e, tc.errs[i])
			}
		}
	}
	if !strings.Contains(func() string { _, e, _ := runCtl(t, "validate", "--json", "-q"); return e }(), "none of the others can be") {
		t.Error("--json and -q together are accepted")
	}
}

func itoa(n int) string { b, _ := json.Marshal(n); return string(b) }
