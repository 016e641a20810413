package deploy_test

import (
	"net/url"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	sigsyaml "sigs.k8s.io/yaml"
)

// TestComposeS3Variant validates compose.s3.yaml over compose.yaml with
// docker-compose, and checks that it and regwarm-s3.yaml agree: the config
// is valid and on S3, its endpoint is the s3 service, every serve and
// worker gets the key variables the config names and a spool volume of
// its own.
func TestComposeS3Variant(t *testing.T) {
	t.Parallel()
	dc := requireTool(t, "docker-compose")
	env := []string{"REGWARM_NATS_PASSWORD=x", "REGWARM_S3_ACCESS_KEY_ID=k", "REGWARM_S3_SECRET_ACCESS_KEY=s"}
	run(t, path(composeDir), env, dc, "-f", "compose.yaml", "-f", "compose.s3.yaml", "config", "-q")
	merged := run(t, path(composeDir), env, dc, "-f", "compose.yaml", "-f", "compose.s3.yaml", "config")
	var cf struct {
		Services map[string]struct {
			Command     []string          `yaml:"command"`
			Environment map[string]string `yaml:"environment"`
			Volumes     []string          `yaml:"volumes"`
		} `yaml:"services"`
		Volumes map[string]any `yaml:"volumes"`
	}
	if err := yaml.Unmarshal([]byte(merged), &cf); err != nil {
		t.Fatal(err)
	}
	cfg := parseConfig(t, readFile(t, composeDir, "regwarm-s3.yaml"), "deploy/compose/regwarm-s3.yaml")
	s3 := cfg.Storage.S3
	if s3 == nil {
		t.Fatal("regwarm-s3.yaml has no storage.s3")
	}
	if u, err := url.Parse(s3.Endpoint); err != nil || u.Hostname() != "s3" {
		t.Errorf("storage.s3.endpoint %q is not the s3 service", s3.Endpoint)
	}
	if _, ok := cf.Services["s3"]; !ok {
		t.Error("no s3 service")
	}
	if b := cf.Services["s3-bucket"]; !strings.Contains(strings.Join(b.Command, " "), "/"+s3.Bucket+")") {
		t.Errorf("s3-bucket does not create bucket %q: %q", s3.Bucket, b.Command)
	}
	spools := map[string]string{}
	for _, name := range []string{"serve-1", "serve-2", "worker-1", "worker-2"} {
		s, ok := cf.Services[name]
		if !ok {
			t.Fatalf("no service %s", name)
		}
		for _, v := range []string{s3.AccessKeyIDEnv, s3.SecretAccessKeyEnv} {
			if s.Environment[v] == "" {
				t.Errorf("service %s lacks %s, which storage.s3 names", name, v)
			}
		}
		var cfgMount, spool string
		for _, v := range s.Volumes {
			src, rest, _ := strings.Cut(v, ":")
			dst, _, _ := strings.Cut(rest, ":")
			switch dst {
			case "/etc/regwarm/regwarm.yaml":
				cfgMount = src
			case "/var/lib/regwarm":
				spool = src
			}
		}
		if !strings.HasSuffix(cfgMount, "/regwarm-s3.yaml") {
			t.Errorf("service %s mounts %q as its config, want regwarm-s3.yaml", name, cfgMount)
		}
		if _, named := cf.Volumes[spool]; !named {
			t.Errorf("service %s: /var/lib/regwarm on %q, want a named volume", name, spool)
		}
		if other, dup := spools[spool]; dup {
			t.Errorf("services %s and %s share the spool volume %s", other, name, spool)
		}
		spools[spool] = name
	}
}

// TestKubernetesS3Overlay renders deploy/kubernetes-s3 with kubectl
// kustomize (offline), strict-decodes the result and checks it: no
// ReadWriteMany claim, both deployments with the Secret regwarm-s3 and an
// emptyDir data volume, and a config on S3 whose key variables the Secret
// holds.
func TestKubernetesS3Overlay(t *testing.T) {
	t.Parallel()
	kubectl := requireTool(t, "kubectl")
	out := run(t, path(), nil, kubectl, "kustomize", "deploy/kubernetes-s3")
	deployments := map[string]*appsv1.Deployment{}
	var cm *corev1.ConfigMap
	var secret *corev1.Secret
	for _, doc := range yamlDocuments([]byte(out)) {
		var tm metav1.TypeMeta
		if err := sigsyaml.Unmarshal(doc, &tm); err != nil {
			t.Fatal(err)
		}
		switch tm.Kind {
		case "Deployment":
			d := &appsv1.Deployment{}
			if err := sigsyaml.UnmarshalStrict(doc, d); err != nil {
				t.Fatalf("Deployment: %v", err)
			}
			deployments[d.Name] = d
		case "ConfigMap":
			cm = &corev1.ConfigMap{}
			if err := sigsyaml.UnmarshalStrict(doc, cm); err != nil {
				t.Fatalf("ConfigMap: %v", err)
			}
		case "Secret":
			s := &corev1.Secret{}
			if err := sigsyaml.UnmarshalStrict(doc, s); err != nil {
				t.Fatalf("Secret: %v", err)
			}
			if s.Name == "regwarm-s3" {
				secret = s
			}
		case "PersistentVolumeClaim":
			t.Error("the overlay keeps a PersistentVolumeClaim")
		}
	}
	if cm == nil || secret == nil {
		t.Fatalf("rendered overlay: ConfigMap %v, Secret regwarm-s3 %v", cm != nil, secret != nil)
	}
	cfg := parseConfig(t, []byte(cm.Data["regwarm.yaml"]), "deploy/kubernetes-s3 regwarm.yaml")
	s3 := cfg.Storage.S3
	if s3 == nil {
		t.Fatal("the overlay's config has no storage.s3")
	}
	for _, v := range []string{s3.AccessKeyIDEnv, s3.SecretAccessKeyEnv} {
		if _, ok := secret.StringData[v]; !ok {
			t.Errorf("Secret regwarm-s3 lacks %s, which storage.s3 names", v)
		}
	}
	for _, name := range []string{"regwarm-serve", "regwarm-worker"} {
		d, ok := deployments[name]
		if !ok {
			t.Fatalf("no deployment %s", name)
		}
		c := d.Spec.Template.Spec.Containers[0]
		var refs []string
		for _, e := range c.EnvFrom {
			if e.SecretRef != nil {
				refs = append(refs, e.SecretRef.Name)
			}
		}
		if !slices.Contains(refs, "regwarm-s3") || !slices.Contains(refs, "regwarm-connectors") {
			t.Errorf("deployment %s takes env from %q, want regwarm-s3 and regwarm-connectors", name, refs)
		}
		found := false
		for _, v := range d.Spec.Template.Spec.Volumes {
			if v.Name == "data" {
				found = true
				if v.EmptyDir == nil || v.PersistentVolumeClaim != nil {
					t.Errorf("deployment %s: volume data is %+v, want an emptyDir", name, v.VolumeSource)
				}
			}
		}
		if !found {
			t.Errorf("deployment %s has no data volume", name)
		}
	}
}
