package fsm

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"

	raftlbv1 "github.com/raftlb/raftlb/proto/raftlb/v1"
)

func registerIfaces(id string, ifaces, addrsEach int) *raftlbv1.Command {
	c := register(id)
	r := c.GetRegisterAgent()
	r.Interfaces = nil
	for i := range ifaces {
		ifc := &raftlbv1.Interface{Name: fmt.Sprintf("eth%d", i)}
		for j := range addrsEach {
			ifc.Addresses = append(ifc.Addresses, fmt.Sprintf("192.0.2.%d", j+1))
		}
		r.Interfaces = append(r.Interfaces, ifc)
	}
	return c
}

func reportVIPs(id string, n int) *raftlbv1.Command {
	r := &raftlbv1.ReportStatusRequest{Id: id}
	for i := range n {
		r.Vips = append(r.Vips, &raftlbv1.VipResult{Vip: fmt.Sprintf("198.51.100.%d", i%250+1), Applied: true})
	}
	return &raftlbv1.Command{Op: &raftlbv1.Command_ReportAgentStatus{ReportAgentStatus: r}}
}

func withTableSize(c *raftlbv1.Command, size uint32) *raftlbv1.Command {
	c.GetCreateService().Service.MaglevTableSize = size
	return c
}

// TestValidateCommandProposalLimits: what the dataplane does not support
// (a per-service Maglev size) and agent lists beyond their bounds are refused
// before proposing, with the field and the reason.
func TestValidateCommandProposalLimits(t *testing.T) {
	update := &raftlbv1.Command{Op: &raftlbv1.Command_UpdateService{UpdateService: &raftlbv1.UpdateServiceRequest{
		Service: &raftlbv1.VirtualService{Key: key(vip1, 80), MaglevTableSize: 251},
	}}}
	for _, tc := range []struct {
		desc string
		cmd  *raftlbv1.Command
		want string // the whole message must start with it; empty: accepted
	}{
		{"maglev size 0", withTableSize(createSvc(vip1, 80, ""), 0), ""},
		{"maglev size default", withTableSize(createSvc(vip1, 80, ""), DefaultMaglevTableSize), ""},
		{"maglev size other prime", withTableSize(createSvc(vip1, 80, ""), 251), "service.maglev_table_size: 251 is not supported"},
		{"maglev size largest", withTableSize(createSvc(vip1, 80, ""), MaxMaglevTableSize), "service.maglev_table_size: 1000003 is not supported"},
		{"maglev size on update", update, "service.maglev_table_size: 251 is not supported"},
		{"interfaces at the limit", registerIfaces("rs1", MaxAgentInterfaces, MaxAgentInterfaceAddrs), ""},
		{"too many interfaces", registerIfaces("rs1", MaxAgentInterfaces+1, 1), "interfaces: 65 interfaces exceed the limit of 64"},
		{"too many addresses", registerIfaces("rs1", 2, MaxAgentInterfaceAddrs+1), "interfaces[0].addresses: 65 addresses exceed the limit of 64"},
		{"vip results at the limit", reportVIPs("rs1", MaxAgentVIPResults), ""},
		{"too many vip results", reportVIPs("rs1", MaxAgentVIPResults+1), "vips: 4097 VIP results exceed the limit of 4096"},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			err := ValidateCommand(tc.cmd)
			if tc.want == "" {
				if err != nil {
					t.Errorf("ValidateCommand = %v, want accepted", err)
				}
				return
			}
			var fe *Error
			if !errors.As(err, &fe) || fe.Code != codes.InvalidArgument || !strings.HasPrefix(err.Error(), tc.want) {
				t.Errorf("ValidateCommand = %v, want InvalidArgument starting %q", err, tc.want)
			}
		})
	}
}

// TestProposalLimitsNotReapplied: an entry written before the limits existed
// applies, and its snapshot restores, as it did then, so replicas replaying
// an old log keep agreeing.
func TestProposalLimitsNotReapplied(t *testing.T) {
	f := newNode(t)
	f.mustApply(t, withTableSize(createSvc(vip1, 80, ""), 251))
	f.mustApply(t, registerIfaces("rs1", MaxAgentInterfaces+1, 1))
	f.mustApply(t, reportVIPs("rs1", MaxAgentVIPResults+1))
	g := newNode(t)
	restore(t, g.FSM, snapshotBytes(t, f.FSM))
	if got := g.Services()[0].GetMaglevTableSize(); got != 251 {
		t.Errorf("restored maglev_table_size = %d, want 251", got)
	}
}
