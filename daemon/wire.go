package daemon

import (
	"os"

	"github.com/regwarm/regwarm/internal/config"
	"github.com/regwarm/regwarm/internal/events"
	"github.com/regwarm/regwarm/registryapi"
)

// This file is where the config meets the packages: each package declares
// the small options it needs, and these functions fill them from cfg.

// natsSetup is the JetStream setup (stream, consumer, lease bucket) cfg
// asks for.
func natsSetup(cfg *config.Config) events.Setup {
	return events.Setup{Subjects: events.Subjects{Prefix: cfg.NATS.SubjectPrefix}, Replicas: cfg.NATS.Replicas,
		MaxDeliveries: cfg.Worker.MaxDeliveries, AckWait: cfg.Worker.AckWait.D()}
}

// natsConnAuth is how regwarm's connections to the NATS of c
// authenticate; the password comes from the environment variable c names.
func natsConnAuth(c config.NATS) events.Auth {
	a := events.Auth{CredentialsFile: c.CredentialsFile, Username: c.Username,
		CAFile: c.TLS.CAFile, CertFile: c.TLS.CertFile, KeyFile: c.TLS.KeyFile}
	if c.PasswordEnv != "" {
		a.Password = os.Getenv(c.PasswordEnv)
	}
	return a
}

// apiConfig is what the registry API reads of cfg.
func apiConfig(cfg *config.Config) registryapi.Config {
	return registryapi.Config{Registries: cfg, Serve: cfg.Serve, Auth: cfg.Auth}
}
