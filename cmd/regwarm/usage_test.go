package main

import (
	"encoding/json"
	"strings"
	"testing"
)

// TestUsageCommand: regwarm usage works without --config on an empty data
// directory, in both formats, and rejects an unknown registry or format.
func TestUsageCommand(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	code, out, errOut := regwarm("usage", "--data-dir", dir, "--format", "json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	var rep struct {
		Registries []struct {
			Name         string `json:"name"`
			Bytes        int64  `json:"bytes"`
			MaxBytes     int64  `json:"max_bytes"`
			Repositories []any  `json:"repositories"`
		} `json:"registries"`
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil || len(rep.Registries) != 1 || rep.Registries[0].Repositories == nil {
		t.Fatalf("json %q: %v", out, err)
	}
	if code, out, _ := regwarm("usage", "--data-dir", dir); code != 0 || !strings.Contains(out, "REGISTRY") {
		t.Errorf("text: exit %d\n%s", code, out)
	}
	if code, _, errOut := regwarm("usage", "--data-dir", dir, "--registry", "nope"); code != 2 || !strings.Contains(errOut, `"nope"`) {
		t.Errorf("unknown registry: exit %d, %q", code, errOut)
	}
	if code, _, _ := regwarm("usage", "--data-dir", dir, "--format", "xml"); code != 2 {
		t.Errorf("--format xml: exit %d, want 2", code)
	}
	if code, out, _ := regwarm("usage", "-h"); code != 0 || !strings.Contains(out, "-registry") {
		t.Errorf("-h: exit %d\n%s", code, out)
	}
}
