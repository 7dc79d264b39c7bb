//go:build !race

package k8swatch

const raceEnabled = false
