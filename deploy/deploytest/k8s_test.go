package deploytest

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
)

// kustomization is the part of kustomize's Kustomization that deploy/k8s uses; decoding it
// strictly makes any other field an error here, so that a new field gets a test.
type kustomization struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Namespace  string `json:"namespace"`
	Labels     []struct {
		Pairs            map[string]string `json:"pairs"`
		IncludeSelectors bool              `json:"includeSelectors"`
	} `json:"labels"`
	Images []struct {
		Name    string `json:"name"`
		NewName string `json:"newName"`
		NewTag  string `json:"newTag"`
	} `json:"images"`
	Resources []string `json:"resources"`
}

// newObject returns the typed object for a manifest's apiVersion and kind.
func newObject(apiVersion, kind string) (any, error) {
	switch apiVersion + " " + kind {
	case "v1 Namespace":
		return &corev1.Namespace{}, nil
	case "v1 ConfigMap":
		return &corev1.ConfigMap{}, nil
	case "v1 Secret":
		return &corev1.Secret{}, nil
	case "v1 Service":
		return &corev1.Service{}, nil
	case "apps/v1 Deployment":
		return &appsv1.Deployment{}, nil
	case "batch/v1 Job":
		return &batchv1.Job{}, nil
	case "autoscaling/v2 HorizontalPodAutoscaler":
		return &autoscalingv2.HorizontalPodAutoscaler{}, nil
	case "policy/v1 PodDisruptionBudget":
		return &policyv1.PodDisruptionBudget{}, nil
	}
	return nil, fmt.Errorf("no test type for apiVersion %q kind %q (add it to newObject)", apiVersion, kind)
}

// manifests is every object of deploy/k8s, decoded strictly, by file name.
type manifests struct {
	kust    kustomization
	objects map[string][]any
}

func loadManifests(t *testing.T) manifests {
	t.Helper()
	dir := deployPath(t, "k8s")
	raw, err := os.ReadFile(filepath.Join(dir, "kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var m manifests
	if err := unmarshalStrict(raw, &m.kust); err != nil {
		t.Fatalf("kustomization.yaml: %v", err)
	}
	m.objects = map[string][]any{}
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, path := range files {
		name := filepath.Base(path)
		if name == "kustomization.yaml" {
			continue
		}
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		for i, doc := range splitYAML(data) {
			obj, err := decodeStrict(doc)
			if err != nil {
				t.Errorf("%s (document %d): %v", name, i+1, err)
				continue
			}
			m.objects[name] = append(m.objects[name], obj)
		}
	}
	return m
}

var docSeparator = regexp.MustCompile(`(?m)^---\s*$`)

func splitYAML(data []byte) [][]byte {
	var docs [][]byte
	for _, d := range docSeparator.Split(string(data), -1) {
		if strings.TrimSpace(stripComments(d)) != "" {
			docs = append(docs, []byte(d))
		}
	}
	return docs
}

func stripComments(s string) string {
	var b strings.Builder
	for _, line := range strings.Split(s, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(line), "#") {
			b.WriteString(line + "\n")
		}
	}
	return b.String()
}

func decodeStrict(doc []byte) (any, error) {
	var tm metav1.TypeMeta
	if err := yaml.Unmarshal(doc, &tm); err != nil {
		return nil, err
	}
	obj, err := newObject(tm.APIVersion, tm.Kind)
	if err != nil {
		return nil, err
	}
	if err := unmarshalStrict(doc, obj); err != nil {
		return nil, fmt.Errorf("%s: %w", tm.Kind, err)
	}
	return obj, nil
}

// unmarshalStrict decodes YAML the way the API server decodes a manifest in strict mode:
// field names match case-sensitively, and unknown or duplicate fields are errors.
// (encoding/json, which yaml.UnmarshalStrict uses, matches names case-insensitively.)
func unmarshalStrict(doc []byte, obj any) error {
	js, err := yaml.YAMLToJSONStrict(doc)
	if err != nil {
		return err
	}
	strictErrs, err := kjson.UnmarshalStrict(js, obj)
	if err != nil {
		return err
	}
	return errors.Join(strictErrs...)
}

func TestDecodeStrictRejectsUnknownFields(t *testing.T) {
	tests := []struct {
		name    string
		doc     string
		wantErr bool
	}{
		{"valid", "apiVersion: v1\nkind: Service\nmetadata:\n  name: a\nspec:\n  ports:\n    - port: 80\n", false},
		{"unknown field", "apiVersion: v1\nkind: Service\nmetadata:\n  name: a\nspec:\n  portz:\n    - port: 80\n", true},
		{"misplaced field", "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: a\nspec:\n  template:\n    spec:\n      containers:\n        - name: x\n          readinessprobe: {}\n", true},
		{"duplicate key", "apiVersion: v1\nkind: Service\nmetadata:\n  name: a\n  name: b\n", true},
		{"unknown kind", "apiVersion: v1\nkind: Pod\nmetadata:\n  name: a\n", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := decodeStrict([]byte(tt.doc))
			if (err != nil) != tt.wantErr {
				t.Errorf("decodeStrict: err = %v, want error %v", err, tt.wantErr)
			}
		})
	}
}

func TestKustomizationListsEveryManifest(t *testing.T) {
	m := loadManifests(t)
	if m.kust.APIVersion != "kustomize.config.k8s.io/v1beta1" || m.kust.Kind != "Kustomization" {
		t.Errorf("kustomization.yaml: apiVersion %q kind %q", m.kust.APIVersion, m.kust.Kind)
	}
	var onDisk []string
	for name := range m.objects {
		onDisk = append(onDisk, name)
	}
	listed := append([]string(nil), m.kust.Resources...)
	sort.Strings(onDisk)
	sort.Strings(listed)
	if diff := cmp.Diff(onDisk, listed); diff != "" {
		t.Errorf("kustomization.yaml resources differ from the manifests in deploy/k8s (-on disk +listed):\n%s", diff)
	}
	if len(onDisk) < 10 {
		t.Errorf("only %d manifests decoded", len(onDisk))
	}
}

// podSpecs returns every pod template of the manifests, by "file/kind/name".
func (m manifests) podSpecs() map[string]corev1.PodTemplateSpec {
	out := map[string]corev1.PodTemplateSpec{}
	for file, objs := range m.objects {
		for _, o := range objs {
			switch o := o.(type) {
			case *appsv1.Deployment:
				out[file+"/Deployment/"+o.Name] = o.Spec.Template
			case *batchv1.Job:
				out[file+"/Job/"+o.Name] = o.Spec.Template
			}
		}
	}
	return out
}

func find[T any](m manifests) []T {
	var out []T
	for _, objs := range m.objects {
		for _, o := range objs {
			if v, ok := o.(T); ok {
				out = append(out, v)
			}
		}
	}
	return out
}

// maasImage is the image name the manifests use for the platform's own containers
// (kustomization.yaml rewrites it).
const maasImage = "maas"

var binaries = map[string]bool{"gateway": true, "control": true, "worker": true}

func TestManifestContainers(t *testing.T) {
	m := loadManifests(t)
	config := map[string]map[string]string{}
	for _, cm := range find[*corev1.ConfigMap](m) {
		config["ConfigMap/"+cm.Name] = cm.Data
	}
	for _, s := range find[*corev1.Secret](m) {
		config["Secret/"+s.Name] = s.StringData
		if len(s.Data) > 0 {
			t.Errorf("Secret %s: use stringData (readable example values), not data", s.Name)
		}
	}
	for where, data := range config {
		var keys []string
		for k := range data {
			keys = append(keys, k)
			if !strings.HasPrefix(k, "MAAS_") {
				t.Errorf("%s: key %s is not a MAAS_ setting", where, k)
			}
		}
		checkSettings(t, where, keys)
	}
	pods := m.podSpecs()
	if len(pods) < 4 {
		t.Fatalf("found %d pod templates, want gateway, control, engine and migration", len(pods))
	}
	seen := map[string]bool{}
	for where, pod := range pods {
		all := append(append([]corev1.Container(nil), pod.Spec.InitContainers...), pod.Spec.Containers...)
		for _, c := range all {
			where := where + "/" + c.Name
			if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() {
				t.Errorf("%s: no cpu and memory requests", where)
			}
			var names []string
			for _, e := range c.Env {
				names = append(names, e.Name)
			}
			checkSettings(t, where, names)
			checkExpansions(t, where, c)
			for _, ef := range c.EnvFrom {
				var ref string
				switch {
				case ef.ConfigMapRef != nil:
					ref = "ConfigMap/" + ef.ConfigMapRef.Name
				case ef.SecretRef != nil:
					ref = "Secret/" + ef.SecretRef.Name
				}
				if _, ok := config[ref]; !ok {
					t.Errorf("%s: envFrom %s is not in deploy/k8s", where, ref)
				}
			}
			if c.Image != maasImage {
				continue
			}
			if len(c.Args) == 0 || !binaries[c.Args[0]] {
				t.Errorf("%s: args %q do not start with gateway, control or worker", where, c.Args)
				continue
			}
			bin := c.Args[0]
			seen[bin] = true
			if strings.Contains(where, "/Job/") {
				continue
			}
			if bin != "control" || len(c.Args) < 2 || c.Args[1] == "serve" {
				checkProbe(t, where, "liveness", c.LivenessProbe, "/health", c.Ports)
			}
			switch bin {
			case "gateway", "control":
				checkProbe(t, where, "readiness", c.ReadinessProbe, "/ready", c.Ports)
			case "worker":
				checkProbe(t, where, "readiness", c.ReadinessProbe, "/health", c.Ports)
			}
		}
	}
	for bin := range binaries {
		if !seen[bin] {
			t.Errorf("no container runs %s", bin)
		}
	}
}

var expansion = regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)

// checkExpansions checks that every $(VAR) in a container's env values and args names a
// variable defined before it in env (Kubernetes leaves unknown references as they are).
func checkExpansions(t *testing.T, where string, c corev1.Container) {
	t.Helper()
	defined := map[string]bool{}
	check := func(what, s string) {
		for _, m := range expansion.FindAllStringSubmatch(s, -1) {
			if !defined[m[1]] {
				t.Errorf("%s: %s refers to $(%s), which is not defined before it", where, what, m[1])
			}
		}
	}
	for _, e := range c.Env {
		check("env "+e.Name, e.Value)
		defined[e.Name] = true
	}
	for _, a := range append(append([]string(nil), c.Command...), c.Args...) {
		check("argument", a)
	}
}

func checkProbe(t *testing.T, where, kind string, p *corev1.Probe, path string, ports []corev1.ContainerPort) {
	t.Helper()
	if p == nil || p.HTTPGet == nil {
		t.Errorf("%s: no HTTP %s probe", where, kind)
		return
	}
	if p.HTTPGet.Path != path {
		t.Errorf("%s: %s probe path %q, want %q", where, kind, p.HTTPGet.Path, path)
	}
	named := false
	for _, port := range ports {
		if port.Name == p.HTTPGet.Port.StrVal || port.ContainerPort == p.HTTPGet.Port.IntVal {
			named = true
		}
	}
	if !named {
		t.Errorf("%s: %s probe port %s is not a port of the container", where, kind, p.HTTPGet.Port.String())
	}
}

func TestManifestWiring(t *testing.T) {
	m := loadManifests(t)
	deployments := map[string]*appsv1.Deployment{}
	for _, d := range find[*appsv1.Deployment](m) {
		deployments[d.Name] = d
		sel, err := metav1.LabelSelectorAsSelector(d.Spec.Selector)
		if err != nil {
			t.Errorf("Deployment %s: selector: %v", d.Name, err)
			continue
		}
		if !sel.Matches(labels.Set(d.Spec.Template.Labels)) {
			t.Errorf("Deployment %s: selector does not match its pod template", d.Name)
		}
	}
	for _, svc := range find[*corev1.Service](m) {
		matched := false
		for _, d := range deployments {
			if labels.SelectorFromSet(svc.Spec.Selector).Matches(labels.Set(d.Spec.Template.Labels)) {
				matched = true
				for _, p := range svc.Spec.Ports {
					if !hasPort(d.Spec.Template.Spec.Containers, p.TargetPort.StrVal) {
						t.Errorf("Service %s: target port %q is not a named port of Deployment %s", svc.Name, p.TargetPort.StrVal, d.Name)
					}
				}
			}
		}
		if !matched {
			t.Errorf("Service %s selects no Deployment", svc.Name)
		}
	}
	hpas := find[*autoscalingv2.HorizontalPodAutoscaler](m)
	if len(hpas) == 0 {
		t.Error("no HorizontalPodAutoscaler")
	}
	for _, h := range hpas {
		d, ok := deployments[h.Spec.ScaleTargetRef.Name]
		if !ok || h.Spec.ScaleTargetRef.Kind != "Deployment" {
			t.Errorf("HPA %s targets %s %s, which is not in deploy/k8s", h.Name, h.Spec.ScaleTargetRef.Kind, h.Spec.ScaleTargetRef.Name)
			continue
		}
		for _, c := range d.Spec.Template.Spec.Containers {
			if c.Resources.Requests.Cpu().IsZero() {
				t.Errorf("HPA %s scales on CPU but %s/%s requests none", h.Name, d.Name, c.Name)
			}
		}
	}
	pdbs := find[*policyv1.PodDisruptionBudget](m)
	if len(pdbs) == 0 {
		t.Error("no PodDisruptionBudget")
	}
	for _, p := range pdbs {
		sel, err := metav1.LabelSelectorAsSelector(p.Spec.Selector)
		if err != nil {
			t.Errorf("PDB %s: %v", p.Name, err)
			continue
		}
		n := 0
		for _, d := range deployments {
			if sel.Matches(labels.Set(d.Spec.Template.Labels)) {
				n++
				if d.Spec.Replicas == nil || p.Spec.MinAvailable == nil || int32(p.Spec.MinAvailable.IntValue()) >= *d.Spec.Replicas {
					t.Errorf("PDB %s: minAvailable must stay below the replicas of %s, or no node can ever drain", p.Name, d.Name)
				}
			}
		}
		if n != 1 {
			t.Errorf("PDB %s selects %d Deployments, want 1", p.Name, n)
		}
	}
	// The engine's pod runs the worker beside the engine.
	sidecar := false
	for _, d := range deployments {
		var images []string
		for _, c := range d.Spec.Template.Spec.Containers {
			images = append(images, c.Image)
		}
		if len(images) > 1 && contains(images, maasImage) {
			sidecar = true
		}
	}
	if !sidecar {
		t.Error("no Deployment runs the worker as a sidecar beside an engine")
	}
	// The migration job runs `control migrate up`.
	migrates := false
	for _, j := range find[*batchv1.Job](m) {
		for _, c := range append(j.Spec.Template.Spec.InitContainers, j.Spec.Template.Spec.Containers...) {
			if c.Image == maasImage && strings.Join(c.Args, " ") == "control migrate up" {
				migrates = true
			}
		}
	}
	if !migrates {
		t.Error("no Job runs `control migrate up`")
	}
}

func hasPort(cs []corev1.Container, name string) bool {
	for _, c := range cs {
		for _, p := range c.Ports {
			if p.Name == name {
				return true
			}
		}
	}
	return false
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// TestDockerfileAndCompose checks that the Dockerfile and the Compose file set only settings
// the binaries read.
func TestDockerfileAndCompose(t *testing.T) {
	docker, err := os.ReadFile(deployPath(t, "docker", "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	var dockerEnv []string
	for _, m := range regexp.MustCompile(`\b(MAAS_[A-Z0-9_]+)=`).FindAllSubmatch(docker, -1) {
		dockerEnv = append(dockerEnv, string(m[1]))
	}
	if len(dockerEnv) == 0 {
		t.Error("Dockerfile: found no MAAS_ setting (the scan is broken)")
	}
	checkSettings(t, "Dockerfile", dockerEnv)
	for _, want := range []string{"CGO_ENABLED=0", "USER 65532", "./gateway ./control ./worker"} {
		if !bytes.Contains(docker, []byte(want)) {
			t.Errorf("Dockerfile: missing %q", want)
		}
	}

	raw, err := os.ReadFile(deployPath(t, "compose", "docker-compose.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var compose struct {
		Services map[string]struct {
			Command     []string       `json:"command"`
			Environment map[string]any `json:"environment"`
			Profiles    []string       `json:"profiles"`
		} `json:"services"`
	}
	if err := yaml.Unmarshal(raw, &compose); err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	for _, want := range []string{"postgres", "redis", "control", "gateway", "worker", "etcd", "minio", "milvus", "prometheus", "grafana"} {
		if _, ok := compose.Services[want]; !ok {
			t.Errorf("docker-compose.yml: no service %s", want)
		}
	}
	platform := 0
	for name, svc := range compose.Services {
		var names []string
		for k := range svc.Environment {
			names = append(names, k)
		}
		checkSettings(t, "docker-compose.yml service "+name, names)
		if len(svc.Command) > 0 && binaries[svc.Command[0]] {
			platform++
			if _, ok := svc.Environment["MAAS_INTERNAL_TOKEN"]; !ok {
				t.Errorf("docker-compose.yml service %s: no MAAS_INTERNAL_TOKEN (required by every platform process)", name)
			}
		}
	}
	if platform < 3 {
		t.Errorf("docker-compose.yml: %d platform services, want gateway, control and worker", platform)
	}
	if !bytes.Contains(raw, []byte("# vllm:")) || !bytes.Contains(raw, []byte("--engine-kind")) {
		t.Error("docker-compose.yml: the commented vLLM profile with its worker sidecar is missing")
	}
}
