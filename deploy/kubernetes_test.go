package deploy_test

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	sigsyaml "sigs.k8s.io/yaml"
)

// kustomization is the part of kustomize's Kustomization the base uses;
// decoding it with KnownFields rejects anything else.
type kustomization struct {
	APIVersion string   `yaml:"apiVersion"`
	Kind       string   `yaml:"kind"`
	Namespace  string   `yaml:"namespace"`
	Resources  []string `yaml:"resources"`
	Labels     []struct {
		Pairs            map[string]string `yaml:"pairs"`
		IncludeSelectors bool              `yaml:"includeSelectors"`
		IncludeTemplates bool              `yaml:"includeTemplates"`
	} `yaml:"labels"`
	Images []kustImage `yaml:"images"`
}

// kustImage is one entry of a Kustomization's images.
type kustImage struct {
	Name    string `yaml:"name"`
	NewName string `yaml:"newName"`
	NewTag  string `yaml:"newTag"`
	Digest  string `yaml:"digest"`
}

// k8sBase is every object of deploy/kubernetes, decoded into its API type.
type k8sBase struct {
	kust         kustomization
	files        map[string]bool // resource files that hold objects
	deployments  map[string]*appsv1.Deployment
	services     map[string]*corev1.Service
	configMaps   map[string]*corev1.ConfigMap
	secrets      map[string]*corev1.Secret
	pvcs         map[string]*corev1.PersistentVolumeClaim
	namespaces   map[string]*corev1.Namespace
	budgets      map[string]*policyv1.PodDisruptionBudget
	objectsCount int
}

const k8sDir = "deploy/kubernetes"

// loadK8s strict-decodes every document of every YAML file in
// deploy/kubernetes: unknown fields, wrong types and unknown kinds fail.
func loadK8s(t *testing.T) *k8sBase {
	t.Helper()
	b := &k8sBase{files: map[string]bool{},
		deployments: map[string]*appsv1.Deployment{}, services: map[string]*corev1.Service{},
		configMaps: map[string]*corev1.ConfigMap{}, secrets: map[string]*corev1.Secret{},
		pvcs: map[string]*corev1.PersistentVolumeClaim{}, namespaces: map[string]*corev1.Namespace{},
		budgets: map[string]*policyv1.PodDisruptionBudget{}}
	matches, err := filepath.Glob(path(k8sDir, "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	more, _ := filepath.Glob(path(k8sDir, "*.yml"))
	matches = append(matches, more...)
	if len(matches) == 0 {
		t.Fatal("no YAML files in deploy/kubernetes")
	}
	for _, file := range matches {
		name := filepath.Base(file)
		data, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		if name == "kustomization.yaml" {
			dec := yaml.NewDecoder(bytes.NewReader(data))
			dec.KnownFields(true)
			if err := dec.Decode(&b.kust); err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			continue
		}
		for i, doc := range yamlDocuments(data) {
			where := fmt.Sprintf("%s document %d", name, i+1)
			if err := b.add(doc); err != nil {
				t.Errorf("%s: %v", where, err)
				continue
			}
			b.files[name] = true
		}
	}
	return b
}

// yamlDocuments splits a multi-document YAML stream at "---" lines and
// drops documents that hold only comments.
func yamlDocuments(data []byte) [][]byte {
	var docs [][]byte
	var cur []string
	flush := func() {
		doc := strings.Join(cur, "\n")
		cur = nil
		for _, l := range strings.Split(doc, "\n") {
			if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
				docs = append(docs, []byte(doc))
				return
			}
		}
	}
	for _, line := range strings.Split(string(data), "\n") {
		if strings.TrimRight(line, " \t") == "---" {
			flush()
			continue
		}
		cur = append(cur, line)
	}
	flush()
	return docs
}

// add decodes one document into the type its apiVersion and kind name.
func (b *k8sBase) add(doc []byte) error {
	var tm metav1.TypeMeta
	if err := sigsyaml.Unmarshal(doc, &tm); err != nil {
		return err
	}
	var (
		obj  any
		meta *metav1.ObjectMeta
	)
	switch tm.APIVersion + " " + tm.Kind {
	case "apps/v1 Deployment":
		o := &appsv1.Deployment{}
		obj, meta = o, &o.ObjectMeta
		defer func() { b.deployments[o.Name] = o }()
	case "v1 Service":
		o := &corev1.Service{}
		obj, meta = o, &o.ObjectMeta
		defer func() { b.services[o.Name] = o }()
	case "v1 ConfigMap":
		o := &corev1.ConfigMap{}
		obj, meta = o, &o.ObjectMeta
		defer func() { b.configMaps[o.Name] = o }()
	case "v1 Secret":
		o := &corev1.Secret{}
		obj, meta = o, &o.ObjectMeta
		defer func() { b.secrets[o.Name] = o }()
	case "v1 PersistentVolumeClaim":
		o := &corev1.PersistentVolumeClaim{}
		obj, meta = o, &o.ObjectMeta
		defer func() { b.pvcs[o.Name] = o }()
	case "v1 Namespace":
		o := &corev1.Namespace{}
		obj, meta = o, &o.ObjectMeta
		defer func() { b.namespaces[o.Name] = o }()
	case "policy/v1 PodDisruptionBudget":
		o := &policyv1.PodDisruptionBudget{}
		obj, meta = o, &o.ObjectMeta
		defer func() { b.budgets[o.Name] = o }()
	default:
		return fmt.Errorf("unexpected apiVersion %q kind %q", tm.APIVersion, tm.Kind)
	}
	if err := sigsyaml.UnmarshalStrict(doc, obj); err != nil {
		return err
	}
	if meta.Name == "" {
		return fmt.Errorf("%s without metadata.name", tm.Kind)
	}
	if meta.Namespace != "" {
		return fmt.Errorf("%s %s sets metadata.namespace; the kustomization sets it", tm.Kind, meta.Name)
	}
	b.objectsCount++
	return nil
}

func TestKubernetesManifestsDecodeStrictly(t *testing.T) {
	t.Parallel()
	b := loadK8s(t)
	k := b.kust
	if k.APIVersion != "kustomize.config.k8s.io/v1beta1" || k.Kind != "Kustomization" {
		t.Errorf("kustomization.yaml: apiVersion %q kind %q", k.APIVersion, k.Kind)
	}
	for _, r := range k.Resources {
		if _, err := os.Stat(path(k8sDir, r)); err != nil {
			t.Errorf("kustomization.yaml lists %s: %v", r, err)
		} else if !b.files[r] {
			t.Errorf("kustomization.yaml lists %s, which holds no object", r)
		}
	}
	for f := range b.files {
		if !slices.Contains(k.Resources, f) {
			t.Errorf("%s is not listed in kustomization.yaml resources", f)
		}
	}
	if k.Namespace == "" {
		t.Error("kustomization.yaml sets no namespace")
	} else if len(b.namespaces) > 0 && b.namespaces[k.Namespace] == nil {
		t.Errorf("kustomization.yaml namespace %q is not the Namespace object's", k.Namespace)
	}
	if !slices.ContainsFunc(k.Images, func(i kustImage) bool { return i.Name == "regwarm" && i.NewName != "" }) {
		t.Error("kustomization.yaml has no images entry for regwarm")
	}
	if b.objectsCount == 0 {
		t.Fatal("no objects decoded")
	}
}

// TestKubernetesBaseIsConsistent checks what strict decoding cannot: that
// the objects fit together and fit regwarm's config.
func TestKubernetesBaseIsConsistent(t *testing.T) {
	t.Parallel()
	b := loadK8s(t)

	cm := b.configMaps["regwarm-config"]
	if cm == nil {
		t.Fatal("no ConfigMap regwarm-config")
	}
	cfg := parseConfig(t, []byte(cm.Data["regwarm.yaml"]), "ConfigMap regwarm-config regwarm.yaml")
	ports := map[string]string{}
	for what, addr := range map[string]string{"serve.listen": cfg.Serve.Listen, "metrics.listen": cfg.Metrics.Listen} {
		host, port, err := net.SplitHostPort(addr)
		if err != nil {
			t.Fatal(err)
		}
		if host != "0.0.0.0" {
			t.Errorf("ConfigMap %s is %s; in a pod it must listen on 0.0.0.0", what, addr)
		}
		ports[what] = port
	}
	if cfg.NATS.URL == "" {
		t.Error("ConfigMap: nats.url is empty; serve and worker need the NATS cluster")
	}
	if cfg.NATS.Replicas != 3 {
		t.Errorf("ConfigMap: nats.replicas %d, want 3 for the 3-server NATS cluster", cfg.NATS.Replicas)
	}

	for _, want := range []struct {
		name, verb string
		ports      []string
	}{
		{"regwarm-serve", "serve", []string{"registry", "metrics"}},
		{"regwarm-worker", "worker", []string{"metrics"}},
	} {
		d := b.deployments[want.name]
		if d == nil {
			t.Errorf("no Deployment %s", want.name)
			continue
		}
		checkDeployment(t, b, d, want.verb, want.ports, cfg, ports)
	}

	svc := b.services["regwarm-serve"]
	if svc == nil {
		t.Fatal("no Service regwarm-serve")
	}
	serve := b.deployments["regwarm-serve"]
	if serve != nil && !labels.SelectorFromSet(svc.Spec.Selector).Matches(labels.Set(serve.Spec.Template.Labels)) {
		t.Errorf("Service regwarm-serve selector %v does not select the serve pods %v", svc.Spec.Selector, serve.Spec.Template.Labels)
	}
	svcPorts := map[int32]string{}
	for _, p := range svc.Spec.Ports {
		svcPorts[p.Port] = p.TargetPort.String()
	}
	if svcPorts[5000] != "registry" || svcPorts[9466] != "metrics" {
		t.Errorf("Service regwarm-serve ports %v, want 5000→registry and 9466→metrics", svcPorts)
	}

	for name, pdb := range b.budgets {
		sel, err := metav1.LabelSelectorAsSelector(pdb.Spec.Selector)
		if err != nil {
			t.Errorf("PodDisruptionBudget %s: %v", name, err)
			continue
		}
		matched := false
		for _, d := range b.deployments {
			if sel.Matches(labels.Set(d.Spec.Template.Labels)) {
				matched = true
				if d.Spec.Replicas != nil && pdb.Spec.MinAvailable != nil && pdb.Spec.MinAvailable.IntValue() >= int(*d.Spec.Replicas) {
					t.Errorf("PodDisruptionBudget %s: minAvailable %s blocks every drain of %s", name, pdb.Spec.MinAvailable, d.Name)
				}
			}
		}
		if !matched {
			t.Errorf("PodDisruptionBudget %s selects no Deployment's pods", name)
		}
	}
	if len(b.budgets) < 2 {
		t.Errorf("%d PodDisruptionBudgets, want one for serve and one for worker", len(b.budgets))
	}

	for name, pvc := range b.pvcs {
		if !slices.Contains(pvc.Spec.AccessModes, corev1.ReadWriteMany) {
			t.Errorf("PersistentVolumeClaim %s: the store is shared by every pod and needs ReadWriteMany", name)
		}
	}
	for name, s := range b.secrets {
		if len(s.Data) > 0 {
			t.Errorf("Secret %s: use stringData placeholders, not data", name)
		}
	}
}

func checkDeployment(t *testing.T, b *k8sBase, d *appsv1.Deployment, verb string, wantPorts []string, cfg interface{ StoreRoot() string }, ports map[string]string) {
	t.Helper()
	name := "Deployment " + d.Name
	if d.Spec.Replicas == nil || *d.Spec.Replicas != 2 {
		t.Errorf("%s: want 2 replicas", name)
	}
	sel, err := metav1.LabelSelectorAsSelector(d.Spec.Selector)
	if err != nil || !sel.Matches(labels.Set(d.Spec.Template.Labels)) {
		t.Errorf("%s: selector does not match its pod template labels (%v)", name, err)
	}
	pod := d.Spec.Template.Spec
	psc := pod.SecurityContext
	if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot {
		t.Errorf("%s: pod securityContext.runAsNonRoot must be true", name)
	}
	if pod.TerminationGracePeriodSeconds == nil || *pod.TerminationGracePeriodSeconds < 30 {
		t.Errorf("%s: terminationGracePeriodSeconds must leave regwarm's 20 s drain room (>= 30)", name)
	}
	if len(pod.Containers) != 1 {
		t.Fatalf("%s: want one container", name)
	}
	c := pod.Containers[0]
	if len(c.Args) == 0 || c.Args[0] != verb || !slices.Contains(c.Args, "--config") {
		t.Errorf("%s: args %q, want %s --config …", name, c.Args, verb)
	}
	if c.Image != "regwarm" {
		t.Errorf("%s: image %q; use \"regwarm\" and set the real one in kustomization images", name, c.Image)
	}
	sc := c.SecurityContext
	if sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
		sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Errorf("%s: container needs readOnlyRootFilesystem: true and allowPrivilegeEscalation: false", name)
	}
	if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() || c.Resources.Limits.Memory().IsZero() {
		t.Errorf("%s: set cpu and memory requests and a memory limit", name)
	}
	named := map[string]int32{}
	for _, p := range c.Ports {
		named[p.Name] = p.ContainerPort
	}
	for _, p := range wantPorts {
		if _, ok := named[p]; !ok {
			t.Errorf("%s: no container port named %s", name, p)
		}
	}
	if p, ok := named["registry"]; ok && fmt.Sprint(p) != ports["serve.listen"] {
		t.Errorf("%s: registry port %d, config serve.listen port %s", name, p, ports["serve.listen"])
	}
	if fmt.Sprint(named["metrics"]) != ports["metrics.listen"] {
		t.Errorf("%s: metrics port %d, config metrics.listen port %s", name, named["metrics"], ports["metrics.listen"])
	}
	for probe, want := range map[string]*corev1.Probe{"/healthz": c.LivenessProbe, "/readyz": c.ReadinessProbe} {
		if want == nil || want.HTTPGet == nil {
			t.Errorf("%s: no HTTP probe on %s", name, probe)
			continue
		}
		if want.HTTPGet.Path != probe || want.HTTPGet.Port.String() != "metrics" {
			t.Errorf("%s: probe %s:%s, want %s on port metrics", name, want.HTTPGet.Path, want.HTTPGet.Port.String(), probe)
		}
	}

	// Volumes: the config from the ConfigMap, the store from the PVC, and
	// every reference resolves.
	vols := map[string]corev1.Volume{}
	for _, v := range pod.Volumes {
		vols[v.Name] = v
		switch {
		case v.ConfigMap != nil && b.configMaps[v.ConfigMap.Name] == nil:
			t.Errorf("%s: volume %s names missing ConfigMap %s", name, v.Name, v.ConfigMap.Name)
		case v.PersistentVolumeClaim != nil && b.pvcs[v.PersistentVolumeClaim.ClaimName] == nil:
			t.Errorf("%s: volume %s names missing PVC %s", name, v.Name, v.PersistentVolumeClaim.ClaimName)
		}
	}
	var configMounted, storeMounted bool
	for _, m := range c.VolumeMounts {
		v, ok := vols[m.Name]
		if !ok {
			t.Errorf("%s: mount of undefined volume %s", name, m.Name)
			continue
		}
		if v.ConfigMap != nil && m.MountPath == "/etc/regwarm" {
			configMounted = true
		}
		if v.PersistentVolumeClaim != nil && strings.HasPrefix(cfg.StoreRoot()+"/", m.MountPath+"/") && !m.ReadOnly {
			storeMounted = true
		}
	}
	if !configMounted {
		t.Errorf("%s: the ConfigMap is not mounted at /etc/regwarm", name)
	}
	if !storeMounted {
		t.Errorf("%s: the store %s is not on the PVC", name, cfg.StoreRoot())
	}
	for _, ef := range c.EnvFrom {
		if ef.SecretRef != nil && b.secrets[ef.SecretRef.Name] == nil {
			t.Errorf("%s: envFrom names missing Secret %s", name, ef.SecretRef.Name)
		}
	}
}

// TestNATSHelmValues checks the chart values regwarm's README documents:
// a 3-server cluster with JetStream on file storage, quoted in the README.
func TestNATSHelmValues(t *testing.T) {
	t.Parallel()
	data := string(readFile(t, k8sDir, "nats", "values.yaml"))
	var v struct {
		Config struct {
			Cluster struct {
				Enabled  bool `yaml:"enabled"`
				Replicas int  `yaml:"replicas"`
			} `yaml:"cluster"`
			JetStream struct {
				Enabled   bool `yaml:"enabled"`
				FileStore struct {
					Enabled bool `yaml:"enabled"`
					PVC     struct {
						Enabled bool   `yaml:"enabled"`
						Size    string `yaml:"size"`
					} `yaml:"pvc"`
				} `yaml:"fileStore"`
			} `yaml:"jetstream"`
		} `yaml:"config"`
	}
	decodeStrict(t, []byte(data), &v, "nats/values.yaml")
	c := v.Config
	if !c.Cluster.Enabled || c.Cluster.Replicas != 3 || !c.JetStream.Enabled || !c.JetStream.FileStore.Enabled ||
		!c.JetStream.FileStore.PVC.Enabled || c.JetStream.FileStore.PVC.Size == "" {
		t.Errorf("nats/values.yaml: want a 3-server cluster with JetStream file storage on a PVC, got %+v", c)
	}
	var body []string
	for _, line := range strings.Split(data, "\n") {
		if len(body) == 0 && strings.HasPrefix(line, "#") {
			continue // the file's header
		}
		body = append(body, line)
	}
	if readme := string(readFile(t, k8sDir, "README.md")); !strings.Contains(readme, strings.Join(body, "\n")) {
		t.Error("deploy/kubernetes/README.md does not quote nats/values.yaml as it is")
	}
}
