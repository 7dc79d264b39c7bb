package dataplane

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// CheckNetAdmin reports whether the process holds CAP_NET_ADMIN in its
// effective set: without it neither the queue nor iptables can be touched,
// and the agent had better say so up front than fail half-installed.
func CheckNetAdmin() error {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return fmt.Errorf("read capabilities: %w", err)
	}
	if data[unix.CAP_NET_ADMIN/32].Effective&(1<<(unix.CAP_NET_ADMIN%32)) == 0 {
		return errors.New("missing CAP_NET_ADMIN: run as root or grant it (securityContext.capabilities.add: [NET_ADMIN], or setcap cap_net_admin+ep)")
	}
	return nil
}
