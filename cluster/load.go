package cluster

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	sigsjson "sigs.k8s.io/json"
	cnpv1beta1 "sigs.k8s.io/network-policy-api/apis/v1beta1"
)

// Kinds the loader reads; any other kind is skipped and listed in
// Cluster.Skipped (a snapshot of a whole namespace also holds Services,
// Deployments...).
const (
	kindNamespace     = "Namespace"
	kindNode          = "Node"
	kindPod           = "Pod"
	kindNetworkPolicy = "NetworkPolicy"
	kindCNP           = "ClusterNetworkPolicy"
	kindList          = "List"
)

// apiVersionsOf returns the apiVersions the loader reads kind in (the
// first is the one messages name); ok is false for kinds it skips.
func apiVersionsOf(kind string) ([]string, bool) {
	switch kind {
	case kindNamespace, kindNode, kindPod:
		return []string{"v1"}, true
	case kindNetworkPolicy:
		return []string{"networking.k8s.io/v1"}, true
	case kindCNP:
		return []string{cnpAPIVersion, cnpAPIVersionAlpha2}, true
	}
	return nil, false
}

// skippedMsg says why an object of a kind the loader does not read is
// left out.
func skippedMsg(apiVersion, kind string) string {
	switch kind {
	case "AdminNetworkPolicy", "BaselineAdminNetworkPolicy":
		return fmt.Sprintf("kind %s (%s) is not enforced: network-policy-api replaced it by ClusterNetworkPolicy (policy.networking.k8s.io/v1beta1, tier Admin or Baseline); object skipped", kind, apiVersion)
	}
	return fmt.Sprintf("kind %s (%s) is not read by nfqpolicy (it reads Namespace, Node, Pod, NetworkPolicy and ClusterNetworkPolicy); object skipped", kind, apiVersion)
}

// maxListDepth bounds nested kind: List documents.
const maxListDepth = 16

// LoadFiles reads snapshot files and directories (every *.yaml, *.yml and
// *.json directly in them, sorted) into one Cluster. A file that cannot be
// read is an error and nothing is returned. Objects that fail to parse or
// validate are dropped and listed in a *ValidationError that is returned
// together with the Cluster of everything else.
func LoadFiles(paths ...string) (*Cluster, error) {
	files, err := ExpandPaths(paths)
	if err != nil {
		return nil, err
	}
	var docs []Document
	var errs []FieldError
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("read snapshot: %w", err)
		}
		d, err := ParseDocuments(f, data)
		errs = appendValidation(errs, err)
		docs = append(docs, d...)
	}
	c, err := DecodeDocuments(docs...)
	errs = appendValidation(errs, err)
	return c, AsError(errs)
}

// ExpandPaths replaces each directory by the *.yaml, *.yml and *.json files
// directly in it, sorted by name. It is an error for a path not to exist or
// for a directory to hold no such file.
func ExpandPaths(paths []string) ([]string, error) {
	if len(paths) == 0 {
		return nil, errors.New("no snapshot files given")
	}
	var out []string
	for _, p := range paths {
		st, err := os.Stat(p)
		if err != nil {
			return nil, fmt.Errorf("snapshot: %w", err)
		}
		if !st.IsDir() {
			out = append(out, p)
			continue
		}
		entries, err := os.ReadDir(p)
		if err != nil {
			return nil, fmt.Errorf("snapshot directory: %w", err)
		}
		var found []string
		for _, e := range entries {
			if e.IsDir() {
				continue
			}
			switch strings.ToLower(filepath.Ext(e.Name())) {
			case ".yaml", ".yml", ".json":
				found = append(found, filepath.Join(p, e.Name()))
			}
		}
		if len(found) == 0 {
			return nil, fmt.Errorf("snapshot directory %s: no *.yaml, *.yml or *.json file", p)
		}
		sort.Strings(found)
		out = append(out, found...)
	}
	return out, nil
}

// Decode reads the objects of one file's content; file names the input in
// error messages. See LoadFiles for what is returned on invalid objects.
func Decode(file string, data []byte) (*Cluster, error) {
	docs, err := ParseDocuments(file, data)
	errs := appendValidation(nil, err)
	c, err := DecodeDocuments(docs...)
	errs = appendValidation(errs, err)
	return c, AsError(errs)
}

// FieldErrors lists the objects a load or decode error names: the entries of a
// *ValidationError, or err itself as one entry without a field.
func FieldErrors(err error) []FieldError { return appendValidation(nil, err) }

func appendValidation(errs []FieldError, err error) []FieldError {
	if err == nil {
		return errs
	}
	var ve *ValidationError
	if errors.As(err, &ve) {
		return append(errs, ve.Errors...)
	}
	return append(errs, FieldError{Msg: err.Error()})
}

// DecodeDocuments reads the objects of parsed documents into one Cluster:
// plain objects, kind: List (nested too), and scenario documents (their
// objects: list). Every object is API-defaulted and validated; invalid and
// duplicate objects are dropped and reported in a *ValidationError returned
// with the Cluster. Namespaces that objects live in but that no document
// declares are added as the API server would have them (with only the
// kubernetes.io/metadata.name label), because pods cannot exist in a
// namespace that does not.
func DecodeDocuments(docs ...Document) (*Cluster, error) {
	b := &builder{seen: make(map[string]string)}
	for _, d := range docs {
		b.document(d)
	}
	return b.finish(), AsError(b.errs)
}

type builder struct {
	c    Cluster
	seen map[string]string // "Kind ns/name" -> where it was first defined
	errs []FieldError
}

// head is what the loader reads of an object before knowing its type.
type head struct {
	APIVersion string            `json:"apiVersion"`
	Kind       string            `json:"kind"`
	Items      []json.RawMessage `json:"items"`
	Objects    []json.RawMessage `json:"objects"`
	// Metadata is read apart (see objectName) so that a type error in it
	// is reported by the typed decoder, with its path.
	Metadata json.RawMessage `json:"metadata"`
}

func (b *builder) document(d Document) {
	var h head
	if err := json.Unmarshal(d.JSON, &h); err != nil {
		b.errs = append(b.errs, FieldError{File: d.File, Doc: d.Index, Msg: "not a Kubernetes object or scenario: " + jsonErrorMsg(err)})
		return
	}
	if h.Kind == "" && h.Objects != nil {
		for i, raw := range h.Objects {
			b.object(d, fmt.Sprintf("objects[%d]", i), raw, 0)
		}
		return
	}
	if h.Kind == "" && h.APIVersion == "" {
		// A scenario with no objects, or a document of something else:
		// scenario documents are recognised by their keys.
		var keys map[string]json.RawMessage
		if json.Unmarshal(d.JSON, &keys) == nil {
			if _, ok := keys["probes"]; ok {
				return
			}
		}
	}
	b.object(d, "", d.JSON, 0)
}

func (b *builder) object(d Document, where string, raw []byte, depth int) {
	fail := func(object, field, msg string) {
		if object == "" {
			object = where
		}
		b.errs = append(b.errs, FieldError{File: d.File, Doc: d.Index, Object: object, Field: field, Msg: msg})
	}
	var h head
	if err := json.Unmarshal(raw, &h); err != nil {
		fail("", "", "not a Kubernetes object: "+jsonErrorMsg(err))
		return
	}
	name := objectName(h)
	switch h.Kind {
	case "":
		fail(name, "kind", "required value: object has no kind")
		return
	case kindList:
		if depth >= maxListDepth {
			fail(name, "items", "lists nested too deeply")
			return
		}
		for i, item := range h.Items {
			w := fmt.Sprintf("items[%d]", i)
			if where != "" {
				w = where + "." + w
			}
			b.object(d, w, item, depth+1)
		}
		return
	}
	want, known := apiVersionsOf(h.Kind)
	if !known {
		object := name
		if object == "" {
			object = where
		}
		b.c.Skipped = append(b.c.Skipped, FieldError{File: d.File, Doc: d.Index, Object: object, Msg: skippedMsg(h.APIVersion, h.Kind)})
		return
	}
	if !slices.Contains(want, h.APIVersion) {
		fail(name, "apiVersion", fmt.Sprintf("unsupported value %q: %s is read as apiVersion %s", h.APIVersion, h.Kind, strings.Join(want, " or ")))
		return
	}
	var (
		obj   any
		check func() []FieldError
	)
	switch h.Kind {
	case kindNamespace:
		ns := &corev1.Namespace{}
		obj, check = ns, func() []FieldError { DefaultNamespace(ns); return ValidateNamespace(ns) }
	case kindNode:
		n := &corev1.Node{}
		obj, check = n, func() []FieldError { return ValidateNode(n) }
	case kindPod:
		p := &corev1.Pod{}
		obj, check = p, func() []FieldError { DefaultPod(p); return ValidatePod(p) }
	case kindNetworkPolicy:
		p := &networkingv1.NetworkPolicy{}
		obj, check = p, func() []FieldError { DefaultPolicy(p); return ValidatePolicy(p) }
	case kindCNP:
		p := &cnpv1beta1.ClusterNetworkPolicy{}
		obj, check = p, func() []FieldError {
			DefaultClusterPolicy(p)
			return append(cnpRequired(ObjectName(p), raw), ValidateClusterPolicy(p)...)
		}
	}
	strict, err := sigsjson.UnmarshalStrict(raw, obj)
	if err != nil {
		field, msg := typeErrorMsg(err)
		fail(name, indexPath(raw, field, err), msg)
		return
	}
	bad := false
	for _, se := range strict {
		field, msg := strictErrorMsg(se)
		fail(name, field, msg)
		bad = true
	}
	if bad {
		return
	}
	if errs := check(); len(errs) > 0 {
		for _, fe := range errs {
			fe.File, fe.Doc = d.File, d.Index
			b.errs = append(b.errs, fe)
		}
		return
	}
	key := objectKey(obj)
	here := fmt.Sprintf("%s:%d", d.File, d.Index)
	if first, dup := b.seen[key]; dup {
		fail(key, "metadata.name", "duplicate object: already defined at "+first)
		return
	}
	b.seen[key] = here
	switch o := obj.(type) {
	case *corev1.Namespace:
		b.c.Namespaces = append(b.c.Namespaces, o)
	case *corev1.Node:
		b.c.Nodes = append(b.c.Nodes, o)
	case *corev1.Pod:
		b.c.Pods = append(b.c.Pods, o)
	case *networkingv1.NetworkPolicy:
		b.c.Policies = append(b.c.Policies, o)
	case *cnpv1beta1.ClusterNetworkPolicy:
		b.c.ClusterPolicies = append(b.c.ClusterPolicies, o)
	}
}

// finish adds the namespaces objects refer to but no document declares.
func (b *builder) finish() *Cluster {
	have := make(map[string]bool, len(b.c.Namespaces))
	for _, ns := range b.c.Namespaces {
		have[ns.Name] = true
	}
	var implicit []string
	add := func(name string) {
		if !have[name] {
			have[name] = true
			implicit = append(implicit, name)
		}
	}
	for _, p := range b.c.Pods {
		add(p.Namespace)
	}
	for _, p := range b.c.Policies {
		add(p.Namespace)
	}
	for _, name := range implicit {
		ns := &corev1.Namespace{
			TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: kindNamespace},
			ObjectMeta: metav1.ObjectMeta{Name: name},
		}
		DefaultNamespace(ns)
		b.c.Namespaces = append(b.c.Namespaces, ns)
	}
	c := b.c
	return &c
}

// ObjectName names an object of the model as error messages do:
// "Kind ns/name" or "Kind name".
func ObjectName(obj any) string { return objectKey(obj) }

func objectKey(obj any) string {
	switch o := obj.(type) {
	case *corev1.Namespace:
		return kindNamespace + " " + o.Name
	case *corev1.Node:
		return kindNode + " " + o.Name
	case *corev1.Pod:
		return kindPod + " " + o.Namespace + "/" + o.Name
	case *networkingv1.NetworkPolicy:
		return kindNetworkPolicy + " " + o.Namespace + "/" + o.Name
	case *cnpv1beta1.ClusterNetworkPolicy:
		return kindCNP + " " + o.Name
	}
	return fmt.Sprintf("%T", obj)
}

func objectName(h head) string {
	var md struct {
		Name      any `json:"name"`
		Namespace any `json:"namespace"`
	}
	if h.Kind == "" || json.Unmarshal(h.Metadata, &md) != nil {
		return ""
	}
	name, _ := md.Name.(string)
	ns, _ := md.Namespace.(string)
	switch h.Kind {
	case kindPod, kindNetworkPolicy:
		if ns == "" {
			ns = metav1.NamespaceDefault
		}
		return h.Kind + " " + ns + "/" + name
	case kindNamespace, kindNode, kindCNP:
		return h.Kind + " " + name
	}
	if ns != "" {
		return h.Kind + " " + ns + "/" + name
	}
	return h.Kind + " " + name
}

func jsonErrorMsg(err error) string {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		return fmt.Sprintf("expected %s, got %s", goTypeName(te.Type.String()), te.Value)
	}
	return strings.TrimPrefix(err.Error(), "json: ")
}

// typeErrorMsg turns a decoding error into "field", "what is wrong".
func typeErrorMsg(err error) (string, string) {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		return te.Field, fmt.Sprintf("expected %s, got %s", goTypeName(te.Type.String()), te.Value)
	}
	return "", strings.TrimPrefix(err.Error(), "json: ")
}

// indexPath adds the list indexes that encoding/json leaves out of a type
// error's field ("spec.ingress.ports.port" becomes
// "spec.ingress[0].ports[1].port"), by finding the first value of the
// reported JSON type at that path. It returns field unchanged when it
// cannot tell.
func indexPath(raw []byte, field string, err error) string {
	var te *json.UnmarshalTypeError
	if field == "" || !errors.As(err, &te) {
		return field
	}
	kind, _, _ := strings.Cut(te.Value, " ")
	var doc any
	if json.Unmarshal(raw, &doc) != nil {
		return field
	}
	segs := strings.Split(field, ".")
	var walk func(v any, i int, path string) (string, bool)
	walk = func(v any, i int, path string) (string, bool) {
		if i == len(segs) && jsonKind(v) == kind {
			return path, true
		}
		switch v := v.(type) {
		case []any:
			for j, e := range v {
				if p, ok := walk(e, i, fmt.Sprintf("%s[%d]", path, j)); ok {
					return p, true
				}
			}
		case map[string]any:
			if i < len(segs) {
				if c, ok := v[segs[i]]; ok {
					p := segs[i]
					if path != "" {
						p = path + "." + segs[i]
					}
					return walk(c, i+1, p)
				}
				break
			}
			// A map field (labels): the culprit is one of its values.
			keys := make([]string, 0, len(v))
			for k := range v {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			for _, k := range keys {
				if jsonKind(v[k]) == kind {
					return path + "." + k, true
				}
			}
		}
		return "", false
	}
	if p, ok := walk(doc, 0, ""); ok {
		return p
	}
	return field
}

func jsonKind(v any) string {
	switch v.(type) {
	case []any:
		return "array"
	case map[string]any:
		return "object"
	case string:
		return "string"
	case float64:
		return "number"
	case bool:
		return "bool"
	}
	return "null"
}

// goTypeName says what a Go type is in the words of the API reference.
func goTypeName(t string) string {
	switch {
	case strings.HasPrefix(t, "[]"):
		return "a list"
	case strings.HasPrefix(t, "map["), strings.HasPrefix(t, "struct"), strings.Contains(t, "."):
		if t == "intstr.IntOrString" {
			return "an integer or a string"
		}
		if strings.HasSuffix(t, "Protocol") || strings.HasSuffix(t, "Type") || strings.HasSuffix(t, "Phase") || strings.HasSuffix(t, "Policy") || strings.HasSuffix(t, "Operator") {
			return "a string"
		}
		return "an object"
	case strings.HasPrefix(t, "int"), strings.HasPrefix(t, "uint"):
		return "an integer"
	case t == "string":
		return "a string"
	case t == "bool":
		return "a boolean"
	}
	return t
}

func strictErrorMsg(err error) (string, string) {
	type fieldPather interface{ FieldPath() string }
	if fp, ok := err.(fieldPather); ok {
		msg := err.Error()
		switch {
		case strings.HasPrefix(msg, "unknown field"):
			return fp.FieldPath(), "unknown field"
		case strings.HasPrefix(msg, "duplicate field"):
			return fp.FieldPath(), "duplicate field"
		}
		return fp.FieldPath(), msg
	}
	return "", err.Error()
}
