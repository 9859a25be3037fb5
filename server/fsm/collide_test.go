package fsm

import (
	"bytes"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"

	raftlbv1 "github.com/raftlb/raftlb/proto/raftlb/v1"
)

// TestAddressCollisions: a VIP or the NAT gateway may not be a director's or
// a realserver's own address, nor a realserver a VIP, the gateway or a
// director; each is refused with FailedPrecondition naming the field and the
// host, and leaves the state as it was.
func TestAddressCollisions(t *testing.T) {
	f := newNode(t)
	d2 := upsertDirector("d2", "192.0.2.2", false)
	d2.GetUpsertDirector().Director.RaftAddress = "203.0.113.2:9444"
	d2.GetUpsertDirector().Director.GossipAddress = "203.0.113.2:9445"
	f.mustApply(t, upsertDirector("d1", "192.0.2.1", false)) // raft 203.0.113.1:9444
	f.mustApply(t, d2)
	f.mustApply(t, upsertDirector("w1", "192.0.2.3", true))
	f.mustApply(t, createSvc(vip1, 80, ""))
	f.mustApply(t, addRS(vip1, 80, rs1, 0, dr))
	f.mustApply(t, setGateway(gw, ""))

	for _, tc := range []struct {
		desc string
		cmd  *raftlbv1.Command
		want string
	}{
		{"vip is a director's front address", createSvc("192.0.2.1", 80, ""), `service.key.vip: 192.0.2.1 is director "d1"'s front_address`},
		{"vip is a witness's front address", createSvc("192.0.2.3", 80, ""), `service.key.vip: 192.0.2.3 is director "w1"'s front_address`},
		{"vip is a director's raft host", createSvc("203.0.113.2", 80, ""), `service.key.vip: 203.0.113.2 is director "d2"'s raft_address`},
		{"vip is a realserver", createSvc(rs1, 443, ""), "service.key.vip: 192.0.2.11 is a realserver of service 198.51.100.10:80/TCP"},
		{"gateway is a director's raft host", setGateway("203.0.113.1", ""), `address.address: 203.0.113.1 is director "d1"'s raft_address`},
		{"gateway is a realserver", setGateway(rs1, ""), "address.address: 192.0.2.11 is a realserver"},
		{"realserver is a vip", addRS(vip1, 80, vip1, 0, dr), "realserver.address: 198.51.100.10 is a VIP"},
		{"realserver is the gateway", addRS(vip1, 80, gw, 8080, nat), "realserver.address: 203.0.113.254 is the NAT gateway address"},
		{"realserver is a director", addRS(vip1, 80, "192.0.2.2", 0, dr), `realserver.address: 192.0.2.2 is director "d2"'s front_address`},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			if err := ValidateCommand(tc.cmd); err != nil {
				t.Fatalf("ValidateCommand = %v, want the refusal to need the state", err)
			}
			before := snapshotBytes(t, f.FSM)
			res := f.apply(t, tc.cmd)
			if codeOf(res) != codes.FailedPrecondition || !strings.HasPrefix(res.GetMessage(), tc.want) {
				t.Errorf("Apply = %v, want FailedPrecondition starting %q", res, tc.want)
			}
			if !bytes.Equal(before, snapshotBytes(t, f.FSM)) {
				t.Errorf("refused command changed the state")
			}
		})
	}

	// Addresses no host uses are fine, as are more services on an existing VIP.
	f.mustApply(t, createSvc(vip2, 80, ""))
	f.mustApply(t, createSvc(vip1, 443, ""))
	f.mustApply(t, addRS(vip2, 80, rs2, 0, tun))
	f.mustApply(t, setGateway("203.0.113.253", ""))
}
