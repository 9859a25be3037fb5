package dataplane

import (
	"fmt"
	"os"
	"path/filepath"
)

// setSysctls makes the kernel refuse to route what the programs leave to
// it. See the package documentation for why each one.
func setSysctls(ifaces ...string) error {
	for _, ifc := range ifaces {
		if ifc == "" {
			continue
		}
		for _, kv := range [][2]string{
			{"forwarding", "0"},
			{"send_redirects", "0"},
		} {
			p := filepath.Join("/proc/sys/net/ipv4/conf", ifc, kv[0])
			if err := os.WriteFile(p, []byte(kv[1]), 0o644); err != nil {
				return fmt.Errorf("set sysctl %s: %w", p, err)
			}
		}
	}
	return nil
}
