package filter

// WithoutClasses returns a copy of rs whose ClusterNetworkPolicy walk
// tests every rule instead of picking rules by peer class, so tests can
// check that both walks decide alike.
func WithoutClasses(rs *Ruleset) *Ruleset {
	c := *rs
	c.peerClass = nil
	c.cnpSets = make([]cnpSet, len(rs.cnpSets))
	for i, s := range rs.cnpSets {
		s.admin.byClass, s.baseline.byClass = nil, nil
		c.cnpSets[i] = s
	}
	return &c
}

// HasClasses reports whether rs picks ClusterNetworkPolicy rules by peer
// class.
func HasClasses(rs *Ruleset) bool { return rs.peerClass != nil }
