package config

import (
	"strings"
	"testing"
)

const webhookConfig = `
connectors:
  - {name: up, url: "https://registry.example"}
registries:
  - {name: hub, default: true, connectors: [up]}
webhooks:
  - {name: upstream, format: distribution, connector: up, secret_env: REGWARM_TEST_WEBHOOK_SECRET}
`

// TestWebhookConfig checks defaults and every webhook validation rule; a
// webhook without a usable secret is refused.
func TestWebhookConfig(t *testing.T) {
	t.Setenv("REGWARM_TEST_WEBHOOK_SECRET", "s3cret")
	t.Setenv("REGWARM_TEST_EMPTY", "")
	c := mustParse(t, webhookConfig)
	if err := c.Validate(); err != nil {
		t.Fatalf("valid webhook refused: %v", err)
	}
	if w := c.Webhooks[0]; len(w.Actions) != 1 || !w.Wants(WebhookPush) || w.Wants(WebhookDelete) || w.Secret() != "s3cret" {
		t.Errorf("defaults: %+v", w)
	}
	tests := []struct {
		name   string
		mutate func(w *Webhook)
		want   string
	}{
		{"no secret", func(w *Webhook) { w.SecretEnv = "" }, "webhooks[0].secret_env: required"},
		{"unset secret", func(w *Webhook) { w.SecretEnv = "REGWARM_TEST_UNSET_XYZ" }, `webhooks[0].secret_env: "REGWARM_TEST_UNSET_XYZ": the environment variable is not set or empty`},
		{"empty secret", func(w *Webhook) { w.SecretEnv = "REGWARM_TEST_EMPTY" }, "not set or empty"},
		{"format", func(w *Webhook) { w.Format = "gitlab" }, `webhooks[0].format: "gitlab": must be one of distribution, harbor, dockerhub, cloudevents`},
		{"connector", func(w *Webhook) { w.Connector = "nope" }, `webhooks[0].connector: "nope": no connector has this name`},
		{"name", func(w *Webhook) { w.Name = "Up Stream" }, `webhooks[0].name: "Up Stream": must match`},
		{"action", func(w *Webhook) { w.Actions = []string{"push", "pull"} }, `webhooks[0].actions[1]: "pull": must be one of push, delete`},
		{"no actions", func(w *Webhook) { w.Actions = []string{} }, "webhooks[0].actions: at least one"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := mustParse(t, webhookConfig)
			tt.mutate(&c.Webhooks[0])
			err := c.Validate()
			wantErr(t, err, ErrInvalid, tt.want)
			if strings.Contains(err.Error(), "s3cret") {
				t.Errorf("error shows the secret: %v", err)
			}
		})
	}
	_, err := Parse([]byte(webhookConfig + `  - {name: upstream, format: harbor, connector: up, secret_env: REGWARM_TEST_WEBHOOK_SECRET}
`))
	wantErr(t, err, ErrInvalid, `webhooks[1].name: "upstream": duplicate: webhooks[0]`)
	if _, err := Parse([]byte(strings.Replace(webhookConfig, "REGWARM_TEST_WEBHOOK_SECRET", "REGWARM_TEST_UNSET_XYZ", 1))); err == nil {
		t.Error("Parse accepted a webhook whose secret is unset")
	}
	if y, err := c.Redacted().YAML(); err != nil || strings.Contains(string(y), "s3cret") {
		t.Errorf("config check output: %v %s", err, y)
	}
}
