package main

import (
	"fmt"
	"strings"

	raftlbv1 "github.com/raftlb/raftlb/proto/raftlb/v1"
)

// words maps the CLI's words to one API enum and back: the one place they are spelled.
type words[E comparable] []struct {
	word string
	val  E
}

// parse returns the value for s, or an error naming the flag and the accepted words.
func (w words[E]) parse(flag, s string) (E, error) {
	for _, e := range w {
		if e.word == strings.ToLower(s) {
			return e.val, nil
		}
	}
	var zero E
	return zero, usagef("--%s: %q is not one of %s", flag, s, w.list())
}

// name returns v's word, "-" for an unspecified value.
func (w words[E]) name(v E) string {
	for _, e := range w {
		if e.val == v {
			return e.word
		}
	}
	if s, ok := any(v).(fmt.Stringer); ok && strings.HasSuffix(s.String(), "_UNSPECIFIED") {
		return "-"
	}
	return fmt.Sprint(v)
}

func (w words[E]) list() string {
	ws := make([]string, len(w))
	for i, e := range w {
		ws[i] = e.word
	}
	return strings.Join(ws, ", ")
}

var (
	protocolWords = words[raftlbv1.Protocol]{
		{"tcp", raftlbv1.Protocol_PROTOCOL_TCP},
		{"udp", raftlbv1.Protocol_PROTOCOL_UDP},
	}
	schedulerWords = words[raftlbv1.Scheduler]{
		{"mh", raftlbv1.Scheduler_SCHEDULER_MH},
		{"sh", raftlbv1.Scheduler_SCHEDULER_SH},
		{"rr", raftlbv1.Scheduler_SCHEDULER_RR},
		{"wrr", raftlbv1.Scheduler_SCHEDULER_WRR},
		{"lc", raftlbv1.Scheduler_SCHEDULER_LC},
		{"wlc", raftlbv1.Scheduler_SCHEDULER_WLC},
	}
	methodWords = words[raftlbv1.ForwardingMethod]{
		{"dr", raftlbv1.ForwardingMethod_FORWARDING_METHOD_DR},
		{"tun", raftlbv1.ForwardingMethod_FORWARDING_METHOD_TUN},
		{"nat", raftlbv1.ForwardingMethod_FORWARDING_METHOD_NAT},
	}
	healthWords = words[raftlbv1.HealthCheckType]{
		{"none", raftlbv1.HealthCheckType_HEALTH_CHECK_TYPE_NONE},
		{"tcp", raftlbv1.HealthCheckType_HEALTH_CHECK_TYPE_TCP},
		{"http", raftlbv1.HealthCheckType_HEALTH_CHECK_TYPE_HTTP},
		{"https", raftlbv1.HealthCheckType_HEALTH_CHECK_TYPE_HTTPS},
	}
	failurePolicyWords = words[raftlbv1.FailurePolicy]{
		{"keep", raftlbv1.FailurePolicy_FAILURE_POLICY_KEEP},
		{"reschedule", raftlbv1.FailurePolicy_FAILURE_POLICY_RESCHEDULE},
		{"drop", raftlbv1.FailurePolicy_FAILURE_POLICY_DROP},
	}
	addressKindWords = words[raftlbv1.AddressKind]{
		{"vip", raftlbv1.AddressKind_ADDRESS_KIND_VIP},
		{"nat-gateway", raftlbv1.AddressKind_ADDRESS_KIND_NAT_GATEWAY},
	}
	adminStateWords = words[raftlbv1.AdminState]{
		{"active", raftlbv1.AdminState_ADMIN_STATE_ACTIVE},
		{"drain", raftlbv1.AdminState_ADMIN_STATE_DRAIN},
	}
	healthStateWords = words[raftlbv1.HealthState]{
		{"unknown", raftlbv1.HealthState_HEALTH_STATE_UNKNOWN},
		{"up", raftlbv1.HealthState_HEALTH_STATE_UP},
		{"down", raftlbv1.HealthState_HEALTH_STATE_DOWN},
	}
	connStateWords = words[raftlbv1.ConnectionState]{
		{"SYN_RECV", raftlbv1.ConnectionState_CONNECTION_STATE_SYN_RECV},
		{"ESTABLISHED", raftlbv1.ConnectionState_CONNECTION_STATE_ESTABLISHED},
		{"FIN_WAIT", raftlbv1.ConnectionState_CONNECTION_STATE_FIN_WAIT},
		{"CLOSE", raftlbv1.ConnectionState_CONNECTION_STATE_CLOSE},
		{"UDP", raftlbv1.ConnectionState_CONNECTION_STATE_UDP},
	}
)
