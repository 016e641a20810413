// Package e2e runs regwarm against real registry clients and servers:
// skopeo, podman, crane, regctl, dockerd, containerd and Debian's
// docker-registry. The helpers live in e2e/harness; every test starts what
// it needs on free loopback ports and stops it again.
//
// Run with `make e2e`. REGWARM_E2E_TARGET=docker-registry runs the suite
// against docker-registry in regwarm's place (to check the tests
// themselves); REGWARM_BIN=path skips the build.
package e2e

import (
	"os"
	"testing"

	"github.com/regwarm/regwarm/e2e/harness"
)

func TestMain(m *testing.M) { os.Exit(harness.Main(m)) }
