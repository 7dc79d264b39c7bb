package cluster

import (
	"encoding/json"
	"fmt"
	"regexp"

	apivalidation "k8s.io/apimachinery/pkg/api/validation"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	metav1validation "k8s.io/apimachinery/pkg/apis/meta/v1/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"
	cnpv1beta1 "sigs.k8s.io/network-policy-api/apis/v1beta1"
)

// ClusterNetworkPolicy (sigs.k8s.io/network-policy-api v0.3.0) is a custom
// resource: the API server validates it with the CRD's OpenAPI schema and
// CEL rules, nothing else. ValidateClusterPolicy applies those rules (of the
// experimental channel, a superset of the standard one: nodes peers,
// domainNames peers and destinationNamedPort are accepted), with the field
// paths the API server reports, plus what the CRD leaves unchecked but
// the enforcer cannot read: label selectors (a selector the API server
// stores but nobody can evaluate, e.g. operator "Equals", is rejected here,
// as it is for NetworkPolicy) and IPv4-mapped IPv6 networks (which would
// never match a packet).

// The API groups the ClusterNetworkPolicy kind is read from. v1alpha2 has
// the same schema as v1beta1 (the CRD serves both, stores v1beta1): a
// v1alpha2 object is read as v1beta1 unchanged.
const (
	CNPGroup            = "policy.networking.k8s.io"
	CNPVersion          = "v1beta1"
	CNPVersionV1alpha2  = "v1alpha2"
	cnpAPIVersion       = CNPGroup + "/" + CNPVersion
	cnpAPIVersionAlpha2 = CNPGroup + "/" + CNPVersionV1alpha2
)

// CRD limits (the +kubebuilder markers of apis/v1beta1).
const (
	cnpMaxPriority = 1000
	cnpMaxItems    = 25 // rules per direction, peers per rule, protocols, networks, domainNames
	cnpMaxRuleName = 100
	cnpMaxCIDRLen  = 43
)

// domainNamePattern is the CRD's pattern for a DomainName.
var domainNamePattern = regexp.MustCompile(`^(\*\.)?([a-zA-Z0-9]([-a-zA-Z0-9_]*[a-zA-Z0-9])?\.)+[a-zA-Z0-9]([-a-zA-Z0-9_]*[a-zA-Z0-9])?\.?$`)

// DefaultClusterPolicy applies what the API server does to a
// ClusterNetworkPolicy before storing it: it is cluster-scoped, so a
// namespace in its metadata is cleared; the CRD has no defaults. The
// apiVersion is set to v1beta1, the version the model holds.
func DefaultClusterPolicy(p *cnpv1beta1.ClusterNetworkPolicy) {
	p.Namespace = ""
	if p.APIVersion != "" {
		p.APIVersion = cnpAPIVersion
	}
}

// ValidateClusterPolicy returns every problem of a ClusterNetworkPolicy.
// Objects from files are also checked by the loader for required fields
// that the Go types cannot tell apart from zero values (spec.priority,
// pods.podSelector).
func ValidateClusterPolicy(p *cnpv1beta1.ClusterNetworkPolicy) []FieldError {
	v := cnpValidator{obj: ObjectName(p)}
	v.errs = fromFieldErrors(v.obj, apivalidation.ValidateObjectMeta(&p.ObjectMeta, false, apivalidation.NameIsDNSSubdomain, field.NewPath("metadata")))
	spec := field.NewPath("spec")
	switch p.Spec.Tier {
	case cnpv1beta1.AdminTier, cnpv1beta1.BaselineTier:
	case "":
		v.add(spec.Child("tier"), "required value")
	default:
		v.add(spec.Child("tier"), "unsupported value %q: supported values: \"Admin\", \"Baseline\"", p.Spec.Tier)
	}
	if p.Spec.Priority < 0 || p.Spec.Priority > cnpMaxPriority {
		v.add(spec.Child("priority"), "invalid value %d: must be between 0 and %d, inclusive", p.Spec.Priority, cnpMaxPriority)
	}
	v.subject(&p.Spec.Subject, spec.Child("subject"))
	if n := len(p.Spec.Ingress); n > cnpMaxItems {
		v.add(spec.Child("ingress"), "too many: %d: must have at most %d items", n, cnpMaxItems)
	}
	for i := range p.Spec.Ingress {
		r := &p.Spec.Ingress[i]
		path := spec.Child("ingress").Index(i)
		v.ruleHead(r.Name, r.Action, path)
		v.list(r.From == nil, len(r.From), path.Child("from"))
		for j := range r.From {
			peer := &r.From[j]
			pp := path.Child("from").Index(j)
			n := v.podPeers(peer.Namespaces, peer.Pods, pp)
			v.exactlyOne(n, pp, "namespaces, pods")
		}
		v.protocols(r.Protocols, path.Child("protocols"))
	}
	if n := len(p.Spec.Egress); n > cnpMaxItems {
		v.add(spec.Child("egress"), "too many: %d: must have at most %d items", n, cnpMaxItems)
	}
	for i := range p.Spec.Egress {
		r := &p.Spec.Egress[i]
		path := spec.Child("egress").Index(i)
		v.ruleHead(r.Name, r.Action, path)
		v.list(r.To == nil, len(r.To), path.Child("to"))
		notPods := false
		for j := range r.To {
			peer := &r.To[j]
			pp := path.Child("to").Index(j)
			n := v.podPeers(peer.Namespaces, peer.Pods, pp)
			if peer.Nodes != nil {
				n++
				notPods = true
				v.selector(peer.Nodes, pp.Child("nodes"))
			}
			if peer.Networks != nil {
				n++
				notPods = true
				v.networks(peer.Networks, pp.Child("networks"))
			}
			if peer.DomainNames != nil {
				n++
				notPods = true
				v.domainNames(peer.DomainNames, pp.Child("domainNames"))
			}
			v.exactlyOne(n, pp, "namespaces, pods, nodes, networks, domainNames")
		}
		v.protocols(r.Protocols, path.Child("protocols"))
		if notPods {
			for _, proto := range r.Protocols {
				if proto.DestinationNamedPort != "" {
					v.add(path, "invalid value: networks/nodes/domainNames peer cannot be set with namedPorts since there are no namedPorts for networks/nodes/domainNames")
					break
				}
			}
		}
	}
	return v.errs
}

type cnpValidator struct {
	obj  string
	errs []FieldError
}

func (v *cnpValidator) add(p *field.Path, format string, args ...any) {
	v.errs = append(v.errs, FieldError{Object: v.obj, Field: p.String(), Msg: fmt.Sprintf(format, args...)})
}

func (v *cnpValidator) ruleHead(name string, action cnpv1beta1.ClusterNetworkPolicyRuleAction, path *field.Path) {
	if len(name) > cnpMaxRuleName {
		v.add(path.Child("name"), "too long: may not be more than %d bytes", cnpMaxRuleName)
	}
	switch action {
	case cnpv1beta1.ClusterNetworkPolicyRuleActionAccept, cnpv1beta1.ClusterNetworkPolicyRuleActionDeny, cnpv1beta1.ClusterNetworkPolicyRuleActionPass:
	case "":
		v.add(path.Child("action"), "required value")
	default:
		v.add(path.Child("action"), "unsupported value %q: supported values: \"Accept\", \"Deny\", \"Pass\"", action)
	}
}

// list checks a required list of 1 to 25 items (from, to).
func (v *cnpValidator) list(absent bool, n int, path *field.Path) {
	switch {
	case absent:
		v.add(path, "required value")
	case n == 0:
		v.add(path, "invalid value: must have at least 1 item")
	case n > cnpMaxItems:
		v.add(path, "too many: %d: must have at most %d items", n, cnpMaxItems)
	}
}

// optionalList checks an optional list that, when present, holds 1 to 25
// items (protocols, networks, domainNames).
func (v *cnpValidator) optionalList(present bool, n int, path *field.Path) {
	switch {
	case present && n == 0:
		v.add(path, "invalid value: must have at least 1 item")
	case n > cnpMaxItems:
		v.add(path, "too many: %d: must have at most %d items", n, cnpMaxItems)
	}
}

func (v *cnpValidator) exactlyOne(n int, path *field.Path, fields string) {
	switch {
	case n == 0:
		v.add(path, "required value: must specify exactly one of %s", fields)
	case n > 1:
		v.add(path, "forbidden: must specify exactly one of %s, not %d", fields, n)
	}
}

func (v *cnpValidator) selector(s *metav1.LabelSelector, path *field.Path) {
	v.errs = append(v.errs, fromFieldErrors(v.obj, metav1validation.ValidateLabelSelector(s, metav1validation.LabelSelectorValidationOptions{}, path))...)
}

func (v *cnpValidator) pods(p *cnpv1beta1.NamespacedPod, path *field.Path) {
	v.selector(&p.NamespaceSelector, path.Child("namespaceSelector"))
	v.selector(&p.PodSelector, path.Child("podSelector"))
}

func (v *cnpValidator) subject(s *cnpv1beta1.ClusterNetworkPolicySubject, path *field.Path) {
	n := 0
	if s.Namespaces != nil {
		n++
		v.selector(s.Namespaces, path.Child("namespaces"))
	}
	if s.Pods != nil {
		n++
		v.pods(s.Pods, path.Child("pods"))
	}
	v.exactlyOne(n, path, "namespaces, pods")
}

func (v *cnpValidator) networks(nets []cnpv1beta1.CIDR, path *field.Path) {
	v.optionalList(true, len(nets), path)
	seen := make(map[cnpv1beta1.CIDR]bool, len(nets))
	for i, c := range nets {
		p := path.Index(i)
		if seen[c] {
			v.add(p, "duplicate value %q", c)
			continue
		}
		seen[c] = true
		if len(c) > cnpMaxCIDRLen {
			v.add(p, "too long: may not be more than %d bytes", cnpMaxCIDRLen)
			continue
		}
		pfx, err := ParseCIDR(string(c))
		if err != nil {
			v.add(p, "invalid value %q: Invalid CIDR format provided (%v)", c, err)
			continue
		}
		if pfx.String() != string(c) {
			// The CRD's rule is cidr(self) == cidr(self).masked(): no bits
			// beyond the prefix length (unlike NetworkPolicy's ipBlock).
			v.add(p, "invalid value %q: Invalid CIDR format provided (not canonical: did you mean %q?)", c, pfx.String())
		}
	}
}

func (v *cnpValidator) domainNames(names []cnpv1beta1.DomainName, path *field.Path) {
	v.optionalList(true, len(names), path)
	seen := make(map[cnpv1beta1.DomainName]bool, len(names))
	for i, d := range names {
		p := path.Index(i)
		if seen[d] {
			v.add(p, "duplicate value %q", d)
			continue
		}
		seen[d] = true
		if !domainNamePattern.MatchString(string(d)) {
			v.add(p, "invalid value %q: must be a domain name with at least two labels, optionally starting with \"*.\" (e.g. example.com, *.example.com)", d)
		}
	}
}

func (v *cnpValidator) protocols(ps []cnpv1beta1.ClusterNetworkPolicyProtocol, path *field.Path) {
	v.optionalList(ps != nil, len(ps), path)
	for i := range ps {
		proto := &ps[i]
		pp := path.Index(i)
		n := 0
		if proto.TCP != nil {
			n++
			v.port(proto.TCP.DestinationPort, pp.Child("tcp"))
		}
		if proto.UDP != nil {
			n++
			v.port(proto.UDP.DestinationPort, pp.Child("udp"))
		}
		if proto.SCTP != nil {
			n++
			v.port(proto.SCTP.DestinationPort, pp.Child("sctp"))
		}
		if proto.DestinationNamedPort != "" {
			n++
		}
		v.exactlyOne(n, pp, "tcp, udp, sctp, destinationNamedPort")
	}
}

// port checks the destinationPort of a tcp, udp or sctp match (path is the
// protocol's path), which its minProperties make required.
func (v *cnpValidator) port(port *cnpv1beta1.Port, path *field.Path) {
	if port == nil {
		v.add(path.Child("destinationPort"), "required value")
		return
	}
	path = path.Child("destinationPort")
	validNum := func(p *field.Path, n int32) bool {
		if n < 1 || n > 65535 {
			v.add(p, "invalid value %d: must be between 1 and 65535, inclusive", n)
			return false
		}
		return true
	}
	switch {
	case port.Number != 0 && port.Range != nil:
		v.add(path, "forbidden: must specify exactly one of number, range, not 2")
	case port.Number != 0:
		validNum(path.Child("number"), port.Number)
	case port.Range != nil:
		r := path.Child("range")
		okStart := validNum(r.Child("start"), port.Range.Start)
		okEnd := validNum(r.Child("end"), port.Range.End)
		if okStart && okEnd && port.Range.Start >= port.Range.End {
			v.add(r, "invalid value: Start port must be less than End port (start %d, end %d)", port.Range.Start, port.Range.End)
		}
	default:
		v.add(path, "required value: must specify exactly one of number, range")
	}
}

// cnpRequired reports the required fields of a ClusterNetworkPolicy's JSON
// that decode to a valid zero value (spec.priority: 0, a NamespacedPod's
// podSelector: {}), which the API server rejects when absent. The other
// required fields are caught by ValidateClusterPolicy on the decoded object.
func cnpRequired(obj string, raw []byte) []FieldError {
	type object = map[string]json.RawMessage
	var errs []FieldError
	missing := func(path *field.Path) {
		errs = append(errs, FieldError{Object: obj, Field: path.String(), Msg: "required value"})
	}
	decode := func(b json.RawMessage) object {
		var o object
		if json.Unmarshal(b, &o) != nil {
			return nil
		}
		return o
	}
	has := func(o object, key string) bool {
		v, ok := o[key]
		return ok && string(v) != "null"
	}
	pods := func(parent object, path *field.Path) {
		p := decode(parent["pods"])
		if p != nil && !has(p, "podSelector") {
			missing(path.Child("pods", "podSelector"))
		}
	}
	top := decode(raw)
	spec := field.NewPath("spec")
	if !has(top, "spec") {
		missing(spec)
		return errs
	}
	s := decode(top["spec"])
	if s == nil {
		return errs // a type error, reported by the typed decoder
	}
	if !has(s, "priority") {
		missing(spec.Child("priority"))
	}
	pods(decode(s["subject"]), spec.Child("subject"))
	for _, dir := range [...]struct{ rules, peers string }{{"ingress", "from"}, {"egress", "to"}} {
		var rules []json.RawMessage
		_ = json.Unmarshal(s[dir.rules], &rules)
		for i, r := range rules {
			var peers []json.RawMessage
			_ = json.Unmarshal(decode(r)[dir.peers], &peers)
			for j, p := range peers {
				pods(decode(p), spec.Child(dir.rules).Index(i).Child(dir.peers).Index(j))
			}
		}
	}
	return errs
}

// podPeers validates the namespaces and pods peer kinds both directions
// share and returns how many of the two are set.
func (v *cnpValidator) podPeers(ns *metav1.LabelSelector, pods *cnpv1beta1.NamespacedPod, pp *field.Path) int {
	n := 0
	if ns != nil {
		n++
		v.selector(ns, pp.Child("namespaces"))
	}
	if pods != nil {
		n++
		v.pods(pods, pp.Child("pods"))
	}
	return n
}
