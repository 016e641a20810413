package daemon

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/nats-io/nats.go"

	"github.com/regwarm/regwarm/internal/config"
	"github.com/regwarm/regwarm/internal/events"
)

// EmbeddedUser is the user regwarm's own processes (and operators)
// authenticate as on the embedded NATS server.
const EmbeddedUser = "regwarm"

// NATSPasswordFile is the file below data_dir that holds EmbeddedUser's
// password.
const NATSPasswordFile = "nats-password"

// natsPasswordPath is <data_dir>/nats-password.
func natsPasswordPath(cfg *config.Config) string {
	return filepath.Join(cfg.DataDir, NATSPasswordFile)
}

// embeddedPassword returns the embedded server's password for
// EmbeddedUser, generating it into <data_dir>/nats-password (mode 0600)
// the first time.
func embeddedPassword(cfg *config.Config) (string, error) {
	path := natsPasswordPath(cfg)
	if pw, err := readPassword(path); err == nil || !errors.Is(err, fs.ErrNotExist) {
		return pw, err
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return "", fmt.Errorf("nats password: %w", err)
	}
	b := make([]byte, 24)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("nats password: %w", err)
	}
	pw := hex.EncodeToString(b)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) { // created meanwhile by another process
		return readPassword(path)
	}
	if err != nil {
		return "", fmt.Errorf("nats password: %w", err)
	}
	if _, err = f.WriteString(pw + "\n"); err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(path)
		return "", fmt.Errorf("nats password: %w", err)
	}
	return pw, nil
}

// readPassword reads a password file; an empty one is an error.
func readPassword(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("nats password: %w", err)
	}
	pw := strings.TrimSpace(string(b))
	if pw == "" {
		return "", fmt.Errorf("nats password: %s is empty", path)
	}
	return pw, nil
}

// embeddedAuth returns the connection option that authenticates a CLI
// verb to the embedded server: only when cfg uses the embedded server
// (no nats.url), url is its address and the password file exists; it
// takes the place of nats.username (meant for external servers).
// Otherwise it returns nil, and no password leaves for another server.
func embeddedAuth(cfg *config.Config, url string) nats.Option {
	if cfg.NATS.URL != "" || url != NATSURL(cfg, "") {
		return nil
	}
	pw, err := readPassword(natsPasswordPath(cfg))
	if err != nil {
		return nil
	}
	return nats.UserInfo(EmbeddedUser, pw)
}

// Accounts of the embedded server: regwarm's own traffic lives in
// natsAccount; anonymous clients get natsPublicAccount, which sees only
// what natsAccount exports to it.
const (
	natsAccount       = "REGWARM"
	natsPublicAccount = "PUBLIC"
	natsAnonymousUser = "anonymous"
)

// embeddedAuthConfig is the nats-server configuration (accounts, users,
// permissions) of the embedded server. An anonymous client may publish
// (or request) the sync subject and, when the registry has no auth,
// subscribe to events; it has no JetStream, no KV, no misses, no jobs and
// no view of regwarm's inboxes, which live in another account.
func embeddedAuthConfig(cfg *config.Config, password string) (string, error) {
	b := make([]byte, 24)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	anonPassword := hex.EncodeToString(b) // never handed out: the user is reached as no_auth_user
	subj := events.Subjects{Prefix: cfg.NATS.SubjectPrefix}
	exports := fmt.Sprintf("{service: %q}", subj.Sync())
	imports := fmt.Sprintf("{service: {account: %s, subject: %q}}", natsAccount, subj.Sync())
	subAllow := `"_INBOX.>"`
	if cfg.Auth == nil {
		exports += fmt.Sprintf(", {stream: %q}", subj.Events())
		imports += fmt.Sprintf(", {stream: {account: %s, subject: %q}}", natsAccount, subj.Events())
		subAllow += fmt.Sprintf(", %q", subj.Events())
	}
	return fmt.Sprintf(`accounts {
  %s {
    jetstream: enabled
    users: [{user: %q, password: %q}]
    exports: [%s]
  }
  %s {
    users: [{user: %q, password: %q, permissions: {
      publish: {allow: [%q]}
      subscribe: {allow: [%s]}
    }}]
    imports: [%s]
  }
}
no_auth_user: %s
`, natsAccount, EmbeddedUser, password, exports,
		natsPublicAccount, natsAnonymousUser, anonPassword, subj.Sync(), subAllow, imports,
		natsAnonymousUser), nil
}
