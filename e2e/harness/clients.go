package harness

import (
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

// clientEnvs caches one isolated client environment per test.
var clientEnvs sync.Map // testing.TB -> *clientEnv

// clientEnv is a private HOME and config for the CLI clients, so that no
// test reads or writes ~/.docker, ~/.regctl, /etc/containers/policy.json or
// the system's registries.conf.
type clientEnv struct {
	env    []string
	home   string
	policy string
}

func envFor(t testing.TB) *clientEnv {
	t.Helper()
	if e, ok := clientEnvs.Load(t); ok {
		return e.(*clientEnv)
	}
	home := t.TempDir()
	ce := &clientEnv{home: home, policy: filepath.Join(home, "policy.json")}
	files := map[string]string{
		ce.policy:                                   `{"default":[{"type":"insecureAcceptAnything"}]}`,
		filepath.Join(home, "registries.conf"):      "unqualified-search-registries = []\n",
		filepath.Join(home, ".docker/config.json"):  "{}\n",
		filepath.Join(home, ".regctl/.placeholder"): "",
	}
	for path, body := range files {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ce.env = []string{
		"HOME=" + home,
		"DOCKER_CONFIG=" + filepath.Join(home, ".docker"),
		"REGISTRY_AUTH_FILE=" + filepath.Join(home, ".docker/config.json"),
		"CONTAINERS_REGISTRIES_CONF=" + filepath.Join(home, "registries.conf"),
		"REGCTL_CONFIG=" + filepath.Join(home, ".regctl/config.json"),
		"TMPDIR=" + home,
	}
	clientEnvs.Store(t, ce)
	t.Cleanup(func() { clientEnvs.Delete(t) })
	return ce
}

// ClientEnv returns the environment variables that isolate the client
// tools of this test (HOME, DOCKER_CONFIG, REGISTRY_AUTH_FILE,
// CONTAINERS_REGISTRIES_CONF, REGCTL_CONFIG, TMPDIR).
func ClientEnv(t testing.TB) []string {
	t.Helper()
	return envFor(t).env
}

// RegistriesConf returns the containers-registries.conf file that podman
// and skopeo use in this test; tests may rewrite it to configure mirrors.
func RegistriesConf(t testing.TB) string {
	t.Helper()
	return filepath.Join(envFor(t).home, "registries.conf")
}

// Skopeo runs skopeo with an accept-anything signature policy and fails
// the test, showing the output, when it fails. It returns the combined output.
func Skopeo(t testing.TB, args ...string) string {
	t.Helper()
	ce := envFor(t)
	return Must(t, ce.env, "skopeo", append([]string{"--policy", ce.policy}, args...)...)
}

// TrySkopeo is Skopeo without failing the test on a non-zero exit.
func TrySkopeo(t testing.TB, args ...string) (string, error) {
	t.Helper()
	ce := envFor(t)
	return Try(t, ce.env, "skopeo", append([]string{"--policy", ce.policy}, args...)...)
}

// Crane runs crane (go-containerregistry) and fails the test on error. Pass
// --insecure for plain-HTTP registries that are not on loopback.
func Crane(t testing.TB, args ...string) string {
	t.Helper()
	return Must(t, envFor(t).env, "crane", args...)
}

// TryCrane is Crane without failing the test on a non-zero exit.
func TryCrane(t testing.TB, args ...string) (string, error) {
	t.Helper()
	return Try(t, envFor(t).env, "crane", args...)
}

// Regctl runs regctl and fails the test on error. Use RegctlHost for plain
// HTTP registries; no ~/.regctl is read or written.
func Regctl(t testing.TB, args ...string) string {
	t.Helper()
	return Must(t, envFor(t).env, "regctl", args...)
}

// RegctlHost returns the regctl flag that marks addr as a plain-HTTP registry.
func RegctlHost(addr string) string {
	return "--host=reg=" + addr + ",tls=disabled"
}

// PodmanCLI runs podman as root with a private image store (vfs), run
// directory and temporary directory, so tests never touch
// /var/lib/containers.
type PodmanCLI struct {
	Root, RunRoot string

	t      testing.TB
	global []string
}

// Podman returns a podman runner with fresh private storage.
func Podman(t testing.TB) *PodmanCLI {
	t.Helper()
	dir := t.TempDir()
	p := &PodmanCLI{Root: filepath.Join(dir, "root"), RunRoot: filepath.Join(ShortTempDir(t, "rwp"), "run"), t: t}
	tmp := filepath.Join(dir, "tmp")
	netdir := filepath.Join(dir, "net")
	for _, d := range []string{p.Root, p.RunRoot, tmp, netdir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	p.global = []string{
		"--root", p.Root, "--runroot", p.RunRoot, "--tmpdir", tmp,
		"--storage-driver", "vfs", "--cgroup-manager", "cgroupfs",
		"--events-backend", "none", "--network-config-dir", netdir,
	}
	if runc, err := exec.LookPath("runc"); err == nil {
		p.global = append(p.global, "--runtime", runc) // crun fails on hybrid cgroups here
	}
	return p
}

// Run runs podman with the private-storage flags and fails the test on error.
func (p *PodmanCLI) Run(args ...string) string {
	p.t.Helper()
	return Must(p.t, envFor(p.t).env, "podman", append(append([]string{}, p.global...), args...)...)
}

// Try is Run without failing the test on a non-zero exit.
func (p *PodmanCLI) Try(args ...string) (string, error) {
	p.t.Helper()
	return Try(p.t, envFor(p.t).env, "podman", append(append([]string{}, p.global...), args...)...)
}
