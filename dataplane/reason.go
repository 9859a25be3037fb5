package dataplane

import "fmt"

// Reason indexes the per-CPU verdict counters; values mirror enum reason
// in bpf/lb.h.
type Reason uint32

// Verdict reasons.
const (
	ReasonXDPPassNotIP Reason = iota
	ReasonXDPPassNotOwned
	ReasonXDPPassNAT
	ReasonXDPPassARP
	ReasonXDPTxDR
	ReasonXDPTxTUN
	ReasonXDPTxARPReply
	ReasonXDPTxICMPEcho
	ReasonXDPTxICMPError
	ReasonDropTruncated
	ReasonDropIPOptions
	ReasonDropFragment
	ReasonDropNoService
	ReasonDropNoLease
	ReasonDropNoReal
	ReasonDropNoNeigh
	ReasonDropProto
	ReasonDropICMPNoConn
	ReasonDropError
	ReasonConnTableFull
	ReasonRNATTableFull
	ReasonEventLost
	ReasonConnRescheduled
	ReasonTCNATIn
	ReasonTCNATOut
	ReasonTCPass
	ReasonTCDropNATNoConn
	ReasonTCDropMethod
	ReasonDecap
	ReasonXDPPassOversize
	ReasonTCTxDR
	ReasonTCTxTUN
	ReasonTCNATICMPIn
	ReasonTCNATICMPOut
	ReasonTCTxTUNProbe
	ReasonConnTableBusy
	ReasonTCTxFragNeeded
	ReasonDropTooBig
	ReasonTCXDPPick
	numReasons
)

var reasonNames = [...]string{
	"xdp_pass_not_ip", "xdp_pass_not_owned", "xdp_pass_nat", "xdp_pass_arp",
	"xdp_tx_dr", "xdp_tx_tun", "xdp_tx_arp_reply", "xdp_tx_icmp_echo", "xdp_tx_icmp_error",
	"drop_truncated", "drop_ip_options", "drop_fragment", "drop_no_service", "drop_no_lease",
	"drop_no_real", "drop_no_neigh", "drop_proto", "drop_icmp_no_conn", "drop_error",
	"conn_table_full", "rnat_table_full", "event_lost", "conn_rescheduled",
	"tc_nat_in", "tc_nat_out", "tc_pass", "tc_drop_nat_no_conn", "tc_drop_method", "decap",
	"xdp_pass_oversize", "tc_tx_dr", "tc_tx_tun", "tc_nat_icmp_in", "tc_nat_icmp_out",
	"tc_tx_tun_probe", "conn_table_busy", "tc_tx_frag_needed", "drop_too_big",
	"tc_xdp_pick",
}

func (r Reason) String() string {
	if r < numReasons {
		return reasonNames[r]
	}
	return fmt.Sprintf("reason(%d)", uint32(r))
}
