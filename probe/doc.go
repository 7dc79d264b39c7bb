// Package probe runs reachability scenarios through the agent's own
// verdict path: for every probe it serializes a real first packet, decodes
// it with filter.Decoder and decides it with a filter.Engine, exactly as a
// packet from NFQUEUE would be.
package probe
