package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestInspectListsEveryProblem: decode errors no longer hide validation
// problems, and a field that failed to decode is reported once.
func TestInspectListsEveryProblem(t *testing.T) {
	t.Parallel()
	c, err := Inspect([]byte(`version: 1
log: {level: loud, levle: debug}
worker: {concurrency: many}
registries:
  - {name: Hub, push: true}
connectors:
  - {name: up, url: "ftp://x", usename: me}
`))
	if c == nil {
		t.Fatal("Inspect returned no config")
	}
	if err == nil {
		t.Fatal("Inspect: no error")
	}
	text := err.Error()
	for _, want := range []string{
		`log.levle: unknown key`,
		`worker.concurrency: "many": want an integer`,
		`connectors[0].usename: unknown key`,
		`log.level: "loud": must be one of`,
		`registries[0].name: "Hub"`,
		`connectors[0].url: "ftp://x": scheme must be http or https`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("problems lack %q:\n%s", want, text)
		}
	}
	if n := strings.Count(text, "worker.concurrency"); n != 1 {
		t.Errorf("worker.concurrency reported %d times, want once:\n%s", n, text)
	}
	if _, perr := Parse([]byte("version: 1\nlog: {levle: x}\n")); perr == nil {
		t.Error("Parse accepted an unknown key")
	}
}

func TestParseRequiresVersion(t *testing.T) {
	t.Parallel()
	for _, doc := range []string{"data_dir: /tmp/x\n", "version:\nlog: {level: info}\n"} {
		_, err := Parse([]byte(doc))
		if err == nil || !strings.Contains(err.Error(), `version: required`) || !errors.Is(err, ErrInvalid) {
			t.Errorf("Parse(%q) = %v, want version: required", doc, err)
		}
	}
	if _, err := Parse([]byte("version: 2\n")); err == nil || !strings.Contains(err.Error(), "version: 2: must be 1") {
		t.Errorf("version 2: %v", err)
	}
	if err := Default().Validate(); err != nil {
		t.Errorf("Default(): %v", err)
	}
}

func TestCheckSecrets(t *testing.T) {
	dir := t.TempDir()
	okFile := filepath.Join(dir, "ok")
	if err := os.WriteFile(okFile, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("REGWARM_TEST_SET", "s3cret")
	t.Setenv("REGWARM_TEST_EMPTY", "")
	c := mustParse(t, `version: 1
nats: {url: "nats://n:4222", username: u, password_env: REGWARM_TEST_NATS_UNSET}
registries: [{name: hub, connectors: [a, b, c, d, e]}]
connectors:
  - {name: a, url: "https://a.example", username: u, password_env: REGWARM_TEST_SET}
  - {name: b, url: "https://b.example", username: u, password_env: REGWARM_TEST_UNSET}
  - {name: c, url: "https://c.example", username: u, password_env: REGWARM_TEST_EMPTY}
  - {name: d, url: "https://d.example", username: u, password_file: `+filepath.Join(dir, "missing")+`}
  - {name: e, url: "https://e.example", username: u, password_file: `+okFile+`}
`)
	err := c.CheckSecrets()
	if !errors.Is(err, ErrSecret) {
		t.Fatalf("CheckSecrets = %v, want ErrSecret", err)
	}
	got := unjoin(err)
	want := []string{
		`nats.password_env: "REGWARM_TEST_NATS_UNSET": environment variable is not set`,
		`connectors[1].password_env: "REGWARM_TEST_UNSET": environment variable is not set`,
		`connectors[2].password_env: "REGWARM_TEST_EMPTY": environment variable is empty`,
		`connectors[3].password_file: "` + filepath.Join(dir, "missing") + `": file does not exist`,
	}
	if len(got) != len(want) {
		t.Fatalf("CheckSecrets gave %d problems, want %d:\n%v", len(got), len(want), err)
	}
	for i, w := range want {
		if got[i].Error() != w {
			t.Errorf("problem %d = %q, want %q", i, got[i], w)
		}
	}
	if strings.Contains(err.Error(), "s3cret") {
		t.Error("a secret leaked into the problems")
	}
	if err := Default().CheckSecrets(); err != nil {
		t.Errorf("Default().CheckSecrets() = %v", err)
	}
}
