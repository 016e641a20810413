package config

import (
	"errors"
	"fmt"
	"os"
)

// CheckSecrets reports every credential the config names that this
// environment cannot provide: an unset nats.password_env (with a nats.url
// that would use it), and a
// connector's password_env that is unset or password_file that cannot be
// read (or either one empty). run, serve and worker refuse to start with
// any; `config check` lists them apart from the file's own problems. Each
// problem is a *FieldError matching ErrSecret; no secret is ever in one.
func (c *Config) CheckSecrets() error {
	var errs []error
	add := func(path, value, msg string) {
		errs = append(errs, &FieldError{Path: path, Value: show(value), Msg: msg, Kind: ErrSecret})
	}
	if n := c.NATS; n.PasswordEnv != "" && n.URL != "" { // the embedded server does not use it
		if v, ok := os.LookupEnv(n.PasswordEnv); !ok {
			add("nats.password_env", n.PasswordEnv, "environment variable is not set")
		} else if v == "" {
			add("nats.password_env", n.PasswordEnv, "environment variable is empty")
		}
	}
	if s3 := c.Storage.S3; s3 != nil {
		for _, f := range []struct{ path, name string }{
			{"storage.s3.access_key_id_env", s3.AccessKeyIDEnv}, {"storage.s3.secret_access_key_env", s3.SecretAccessKeyEnv},
		} {
			if f.name == "" {
				continue
			}
			if v, ok := os.LookupEnv(f.name); !ok {
				add(f.path, f.name, "environment variable is not set")
			} else if v == "" {
				add(f.path, f.name, "environment variable is empty")
			}
		}
	}
	for i := range c.Connectors {
		cn := &c.Connectors[i]
		if _, err := cn.Password(); err != nil {
			field, value := "password_env", cn.PasswordEnv
			if cn.PasswordEnv == "" {
				field, value = "password_file", cn.PasswordFile
			}
			add(fmt.Sprintf("connectors[%d].%s", i, field), value, secretProblem(cn, err))
		}
	}
	for i, w := range c.Webhooks {
		if w.SecretEnv != "" && w.Secret() == "" {
			add(fmt.Sprintf("webhooks[%d].secret_env", i), w.SecretEnv, "environment variable is not set or empty")
		}
	}
	return errors.Join(errs...)
}

// secretProblem says in a few words why cn's password could not be read.
func secretProblem(cn *Connector, err error) string {
	switch {
	case cn.PasswordEnv != "":
		if _, ok := os.LookupEnv(cn.PasswordEnv); !ok {
			return "environment variable is not set"
		}
		return "environment variable is empty"
	case errors.Is(err, os.ErrNotExist):
		return "file does not exist"
	case errors.Is(err, os.ErrPermission):
		return "file is not readable"
	}
	return "file is empty or unreadable"
}
