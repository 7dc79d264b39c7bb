package cluster

import (
	"fmt"
	"net/netip"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apivalidation "k8s.io/apimachinery/pkg/api/validation"
	metav1validation "k8s.io/apimachinery/pkg/apis/meta/v1/validation"
	"k8s.io/apimachinery/pkg/util/intstr"
	utilvalidation "k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"
)

// The Validate functions reject what the API server would reject and what
// the enforcer depends on, with the API server's field paths. They expect
// defaulted objects (see the Default functions). Where the API server is
// laxer than the enforcer can be safely (IPv4 octets with leading zeros,
// which software reads differently), they follow the API server's strict
// IP validation.

// supportedProtocols lists the protocols for messages, as the API server
// lists them.
const supportedProtocols = `"TCP", "UDP", "SCTP"`

func supportedProtocol(p corev1.Protocol) bool {
	return p == corev1.ProtocolTCP || p == corev1.ProtocolUDP || p == corev1.ProtocolSCTP
}

// ValidatePolicy returns every problem of a defaulted NetworkPolicy.
func ValidatePolicy(p *networkingv1.NetworkPolicy) []FieldError {
	obj := ObjectName(p)
	errs := fromFieldErrors(obj, apivalidation.ValidateObjectMeta(&p.ObjectMeta, true, apivalidation.NameIsDNSSubdomain, field.NewPath("metadata")))
	spec := field.NewPath("spec")
	errs = append(errs, fromFieldErrors(obj, metav1validation.ValidateLabelSelector(&p.Spec.PodSelector, metav1validation.LabelSelectorValidationOptions{}, spec.Child("podSelector")))...)
	for i, r := range p.Spec.Ingress {
		path := spec.Child("ingress").Index(i)
		for j := range r.Ports {
			errs = append(errs, validatePolicyPort(obj, &r.Ports[j], path.Child("ports").Index(j))...)
		}
		for j := range r.From {
			errs = append(errs, validatePeer(obj, &r.From[j], path.Child("from").Index(j))...)
		}
	}
	for i, r := range p.Spec.Egress {
		path := spec.Child("egress").Index(i)
		for j := range r.Ports {
			errs = append(errs, validatePolicyPort(obj, &r.Ports[j], path.Child("ports").Index(j))...)
		}
		for j := range r.To {
			errs = append(errs, validatePeer(obj, &r.To[j], path.Child("to").Index(j))...)
		}
	}
	types := spec.Child("policyTypes")
	if len(p.Spec.PolicyTypes) > 2 {
		errs = append(errs, FieldError{Object: obj, Field: types.String(), Msg: "may not specify more than two policyTypes"})
	}
	for i, t := range p.Spec.PolicyTypes {
		if t != networkingv1.PolicyTypeIngress && t != networkingv1.PolicyTypeEgress {
			errs = append(errs, FieldError{Object: obj, Field: types.Index(i).String(),
				Msg: fmt.Sprintf("unsupported value %q: supported values: \"Ingress\", \"Egress\"", t)})
		}
	}
	return errs
}

func validatePolicyPort(obj string, port *networkingv1.NetworkPolicyPort, path *field.Path) []FieldError {
	var errs []FieldError
	add := func(p *field.Path, format string, args ...any) {
		errs = append(errs, FieldError{Object: obj, Field: p.String(), Msg: fmt.Sprintf(format, args...)})
	}
	if port.Protocol != nil && !supportedProtocol(*port.Protocol) {
		add(path.Child("protocol"), "unsupported value %q: supported values: %s", *port.Protocol, supportedProtocols)
	}
	switch {
	case port.Port == nil:
		if port.EndPort != nil {
			add(path.Child("endPort"), "may not be specified when `port` is not specified")
		}
	case port.Port.Type == intstr.Int:
		if msgs := utilvalidation.IsValidPortNum(int(port.Port.IntVal)); len(msgs) > 0 {
			add(path.Child("port"), "invalid value %d: %s", port.Port.IntVal, strings.Join(msgs, "; "))
		}
		if port.EndPort != nil {
			if msgs := utilvalidation.IsValidPortNum(int(*port.EndPort)); len(msgs) > 0 {
				add(path.Child("endPort"), "invalid value %d: %s", *port.EndPort, strings.Join(msgs, "; "))
			} else if *port.EndPort < port.Port.IntVal {
				add(path.Child("endPort"), "invalid value %d: must be greater than or equal to `port` (%d)", *port.EndPort, port.Port.IntVal)
			}
		}
	default:
		if msgs := utilvalidation.IsValidPortName(port.Port.StrVal); len(msgs) > 0 {
			add(path.Child("port"), "invalid port name %q: %s", port.Port.StrVal, strings.Join(msgs, "; "))
		}
		if port.EndPort != nil {
			add(path.Child("endPort"), "may not be specified when `port` is a named port (%q)", port.Port.StrVal)
		}
	}
	return errs
}

func validatePeer(obj string, peer *networkingv1.NetworkPolicyPeer, path *field.Path) []FieldError {
	var errs []FieldError
	opts := metav1validation.LabelSelectorValidationOptions{}
	n := 0
	if peer.PodSelector != nil {
		n++
		errs = append(errs, fromFieldErrors(obj, metav1validation.ValidateLabelSelector(peer.PodSelector, opts, path.Child("podSelector")))...)
	}
	if peer.NamespaceSelector != nil {
		n++
		errs = append(errs, fromFieldErrors(obj, metav1validation.ValidateLabelSelector(peer.NamespaceSelector, opts, path.Child("namespaceSelector")))...)
	}
	if peer.IPBlock != nil {
		n++
		errs = append(errs, validateIPBlock(obj, peer.IPBlock, path.Child("ipBlock"))...)
	}
	switch {
	case n == 0:
		errs = append(errs, FieldError{Object: obj, Field: path.String(), Msg: "required value: must specify a peer (podSelector, namespaceSelector or ipBlock)"})
	case n > 1 && peer.IPBlock != nil:
		errs = append(errs, FieldError{Object: obj, Field: path.String(), Msg: "forbidden: may not specify both ipBlock and another peer"})
	}
	return errs
}

func validateIPBlock(obj string, b *networkingv1.IPBlock, path *field.Path) []FieldError {
	var errs []FieldError
	add := func(p *field.Path, format string, args ...any) {
		errs = append(errs, FieldError{Object: obj, Field: p.String(), Msg: fmt.Sprintf(format, args...)})
	}
	if b.CIDR == "" {
		add(path.Child("cidr"), "required value")
		return errs
	}
	cidr, err := ParseCIDR(b.CIDR)
	if err != nil {
		add(path.Child("cidr"), "%q %v", b.CIDR, err)
		return errs
	}
	for i, s := range b.Except {
		p := path.Child("except").Index(i)
		ex, err := ParseCIDR(s)
		switch {
		case err != nil:
			add(p, "%q %v", s, err)
		case ex.Addr().Is4() != cidr.Addr().Is4():
			add(p, "%q is not of the address family of cidr %q", s, b.CIDR)
		case ex.Bits() <= cidr.Bits() || !cidr.Contains(ex.Addr()):
			add(p, "%q is not within cidr %q", s, b.CIDR)
		}
	}
	return errs
}

// ParseCIDR parses an ipBlock CIDR as the enforcer reads it: bits beyond
// the prefix length are allowed (the API server's legacy validation accepts
// "10.0.0.1/16") and cleared; leading zeros and IPv4-mapped IPv6 prefixes
// are rejected as the API server's strict validation does.
func ParseCIDR(s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("is not a valid CIDR (e.g. 10.9.8.0/24 or 2001:db8::/64)")
	}
	if p.Addr().Is4In6() {
		return netip.Prefix{}, fmt.Errorf("must not be an IPv4-mapped IPv6 prefix")
	}
	return p.Masked(), nil
}

// ParseIP parses an address field (pod IPs, host IPs, node addresses):
// no zones, no IPv4-mapped IPv6, no leading zeros.
func ParseIP(s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("is not a valid IP address")
	}
	if a.Zone() != "" {
		return netip.Addr{}, fmt.Errorf("must not have a zone")
	}
	if a.Is4In6() {
		return netip.Addr{}, fmt.Errorf("must not be an IPv4-mapped IPv6 address")
	}
	return a, nil
}

// ValidateNamespace returns every problem of a defaulted Namespace.
func ValidateNamespace(ns *corev1.Namespace) []FieldError {
	return fromFieldErrors(ObjectName(ns), apivalidation.ValidateObjectMeta(&ns.ObjectMeta, false, apivalidation.NameIsDNSLabel, field.NewPath("metadata")))
}

// ValidateNode returns the problems of a Node that matter here: its name
// and labels, and addresses of IP types that do not parse.
func ValidateNode(n *corev1.Node) []FieldError {
	obj := ObjectName(n)
	errs := fromFieldErrors(obj, apivalidation.ValidateObjectMeta(&n.ObjectMeta, false, apivalidation.NameIsDNSSubdomain, field.NewPath("metadata")))
	addrs := field.NewPath("status", "addresses")
	for i, a := range n.Status.Addresses {
		if a.Type != corev1.NodeInternalIP && a.Type != corev1.NodeExternalIP {
			continue
		}
		if _, err := ParseIP(a.Address); err != nil {
			errs = append(errs, FieldError{Object: obj, Field: addrs.Index(i).Child("address").String(), Msg: fmt.Sprintf("%q %v", a.Address, err)})
		}
	}
	return errs
}

// ValidatePod returns the problems of a defaulted Pod that matter here: its
// metadata, container ports (named ports are matched by policies) and
// addresses.
func ValidatePod(p *corev1.Pod) []FieldError {
	obj := ObjectName(p)
	errs := fromFieldErrors(obj, apivalidation.ValidateObjectMeta(&p.ObjectMeta, true, apivalidation.NameIsDNSSubdomain, field.NewPath("metadata")))
	add := func(path *field.Path, format string, args ...any) {
		errs = append(errs, FieldError{Object: obj, Field: path.String(), Msg: fmt.Sprintf(format, args...)})
	}
	names := map[string]bool{}
	checkPorts := func(cs []corev1.Container, path *field.Path) {
		for i, c := range cs {
			for j, port := range c.Ports {
				pp := path.Index(i).Child("ports").Index(j)
				if port.Name != "" {
					if msgs := utilvalidation.IsValidPortName(port.Name); len(msgs) > 0 {
						add(pp.Child("name"), "invalid port name %q: %s", port.Name, strings.Join(msgs, "; "))
					} else if names[port.Name] {
						add(pp.Child("name"), "duplicate value %q", port.Name)
					}
					names[port.Name] = true
				}
				if msgs := utilvalidation.IsValidPortNum(int(port.ContainerPort)); len(msgs) > 0 {
					add(pp.Child("containerPort"), "invalid value %d: %s", port.ContainerPort, strings.Join(msgs, "; "))
				}
				if port.HostPort != 0 {
					if msgs := utilvalidation.IsValidPortNum(int(port.HostPort)); len(msgs) > 0 {
						add(pp.Child("hostPort"), "invalid value %d: %s", port.HostPort, strings.Join(msgs, "; "))
					}
				}
				if !supportedProtocol(port.Protocol) {
					add(pp.Child("protocol"), "unsupported value %q: supported values: %s", port.Protocol, supportedProtocols)
				}
			}
		}
	}
	spec := field.NewPath("spec")
	checkPorts(p.Spec.InitContainers, spec.Child("initContainers"))
	checkPorts(p.Spec.Containers, spec.Child("containers"))

	status := field.NewPath("status")
	var podIP netip.Addr
	if p.Status.PodIP != "" {
		a, err := ParseIP(p.Status.PodIP)
		if err != nil {
			add(status.Child("podIP"), "%q %v", p.Status.PodIP, err)
		}
		podIP = a
	}
	if len(p.Status.PodIPs) > 2 {
		add(status.Child("podIPs"), "must have at most 2 entries (one per IP family)")
	}
	seen := map[bool]bool{}
	for i, ip := range p.Status.PodIPs {
		path := status.Child("podIPs").Index(i).Child("ip")
		a, err := ParseIP(ip.IP)
		if err != nil {
			add(path, "%q %v", ip.IP, err)
			continue
		}
		if i == 0 && podIP.IsValid() && a != podIP {
			add(path, "%q must be equal to status.podIP %q", ip.IP, p.Status.PodIP)
		}
		if seen[a.Is4()] {
			add(path, "%q: may specify no more than one IP for each IP family", ip.IP)
		}
		seen[a.Is4()] = true
	}
	if p.Status.HostIP != "" {
		if _, err := ParseIP(p.Status.HostIP); err != nil {
			add(status.Child("hostIP"), "%q %v", p.Status.HostIP, err)
		}
	}
	for i, ip := range p.Status.HostIPs {
		if _, err := ParseIP(ip.IP); err != nil {
			add(status.Child("hostIPs").Index(i).Child("ip"), "%q %v", ip.IP, err)
		}
	}
	return errs
}
