//go:build race

package cluster

// raceEnabled: the race detector slows loading several times, so timing
// limits are not checked under it.
const raceEnabled = true
