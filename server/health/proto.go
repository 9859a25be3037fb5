package health

import (
	"errors"
	"fmt"
	"math"
	"net/netip"
	"time"

	raftlbv1 "github.com/raftlb/raftlb/proto/raftlb/v1"
)

// ErrInvalidTarget is wrapped by every error converting a service key or
// realserver into a Target.
var ErrInvalidTarget = errors.New("invalid health target")

// FromProto converts the API's health check into a Check with defaults
// applied and validates it. A nil check means CheckNone.
func FromProto(hc *raftlbv1.HealthCheck) (Check, error) {
	if hc == nil {
		return Check{}.WithDefaults(), nil
	}
	var c Check
	switch hc.GetType() {
	case raftlbv1.HealthCheckType_HEALTH_CHECK_TYPE_UNSPECIFIED, raftlbv1.HealthCheckType_HEALTH_CHECK_TYPE_NONE:
		c.Type = CheckNone
	case raftlbv1.HealthCheckType_HEALTH_CHECK_TYPE_TCP:
		c.Type = CheckTCP
	case raftlbv1.HealthCheckType_HEALTH_CHECK_TYPE_HTTP:
		c.Type = CheckHTTP
	case raftlbv1.HealthCheckType_HEALTH_CHECK_TYPE_HTTPS:
		c.Type = CheckHTTPS
	default:
		return Check{}, fmt.Errorf("%w: type %d is unknown", ErrInvalidCheck, hc.GetType())
	}
	if hc.GetPort() > math.MaxUint16 {
		return Check{}, fmt.Errorf("%w: port %d is above 65535", ErrInvalidCheck, hc.GetPort())
	}
	if hc.GetRise() > math.MaxInt32 || hc.GetFall() > math.MaxInt32 || hc.GetExpectedStatus() > math.MaxInt32 {
		return Check{}, fmt.Errorf("%w: rise, fall or expected status out of range", ErrInvalidCheck)
	}
	c.Interval = time.Duration(hc.GetIntervalMs()) * time.Millisecond
	c.Timeout = time.Duration(hc.GetTimeoutMs()) * time.Millisecond
	c.Rise = int(hc.GetRise())
	c.Fall = int(hc.GetFall())
	c.Path = hc.GetPath()
	c.ExpectedStatus = int(hc.GetExpectedStatus())
	c.Port = uint16(hc.GetPort())
	c = c.WithDefaults()
	if err := c.Validate(); err != nil {
		return Check{}, err
	}
	return c, nil
}

// ServiceKeyFromProto converts the API's service key.
func ServiceKeyFromProto(k *raftlbv1.ServiceKey) (ServiceKey, error) {
	if k == nil {
		return ServiceKey{}, fmt.Errorf("%w: service key is missing", ErrInvalidTarget)
	}
	vip, err := netip.ParseAddr(k.GetVip())
	if err != nil {
		return ServiceKey{}, fmt.Errorf("%w: parse vip: %w", ErrInvalidTarget, err)
	}
	if k.GetPort() > math.MaxUint16 {
		return ServiceKey{}, fmt.Errorf("%w: service port %d is above 65535", ErrInvalidTarget, k.GetPort())
	}
	var proto Protocol
	switch k.GetProtocol() {
	case raftlbv1.Protocol_PROTOCOL_TCP:
		proto = ProtocolTCP
	case raftlbv1.Protocol_PROTOCOL_UDP:
		proto = ProtocolUDP
	default:
		return ServiceKey{}, fmt.Errorf("%w: protocol %s is not tcp or udp", ErrInvalidTarget, k.GetProtocol())
	}
	return ServiceKey{VIP: vip.Unmap(), Port: uint16(k.GetPort()), Protocol: proto}, nil
}

// TargetFromProto converts a service key and one of its realservers. The
// realserver's port is kept as configured (zero means the service's port) so
// that Verdict names the realserver exactly as the replicated state does.
func TargetFromProto(k *raftlbv1.ServiceKey, rs *raftlbv1.Realserver) (Target, error) {
	svc, err := ServiceKeyFromProto(k)
	if err != nil {
		return Target{}, err
	}
	if rs == nil {
		return Target{}, fmt.Errorf("%w: realserver is missing", ErrInvalidTarget)
	}
	addr, err := netip.ParseAddr(rs.GetAddress())
	if err != nil {
		return Target{}, fmt.Errorf("%w: parse realserver address: %w", ErrInvalidTarget, err)
	}
	if rs.GetPort() > math.MaxUint16 {
		return Target{}, fmt.Errorf("%w: realserver port %d is above 65535", ErrInvalidTarget, rs.GetPort())
	}
	var m Method
	switch rs.GetMethod() {
	case raftlbv1.ForwardingMethod_FORWARDING_METHOD_NAT:
		m = MethodNAT
	case raftlbv1.ForwardingMethod_FORWARDING_METHOD_TUN:
		m = MethodTUN
	case raftlbv1.ForwardingMethod_FORWARDING_METHOD_DR:
		m = MethodDR
	default:
		return Target{}, fmt.Errorf("%w: forwarding method %s is not nat, tun or dr", ErrInvalidTarget, rs.GetMethod())
	}
	return Target{Service: svc, Address: addr.Unmap(), Port: uint16(rs.GetPort()), Method: m}, nil
}

// ToProto converts s to the API's health state.
func (s State) ToProto() raftlbv1.HealthState {
	switch s {
	case StateUp:
		return raftlbv1.HealthState_HEALTH_STATE_UP
	case StateDown:
		return raftlbv1.HealthState_HEALTH_STATE_DOWN
	default:
		return raftlbv1.HealthState_HEALTH_STATE_UNKNOWN
	}
}

// StateFromProto converts the API's health state; unspecified is unknown.
func StateFromProto(s raftlbv1.HealthState) State {
	switch s {
	case raftlbv1.HealthState_HEALTH_STATE_UP:
		return StateUp
	case raftlbv1.HealthState_HEALTH_STATE_DOWN:
		return StateDown
	default:
		return StateUnknown
	}
}

// Verdict is the replicated form of a transition of t to s.
func Verdict(t Target, s State) *raftlbv1.HealthVerdict {
	return &raftlbv1.HealthVerdict{
		Service: &raftlbv1.ServiceKey{
			Vip:      t.Service.VIP.String(),
			Port:     uint32(t.Service.Port),
			Protocol: protocolToProto(t.Service.Protocol),
		},
		Address: t.Address.String(),
		Port:    uint32(t.Port),
		State:   s.ToProto(),
	}
}

func protocolToProto(p Protocol) raftlbv1.Protocol {
	switch p {
	case ProtocolTCP:
		return raftlbv1.Protocol_PROTOCOL_TCP
	case ProtocolUDP:
		return raftlbv1.Protocol_PROTOCOL_UDP
	default:
		return raftlbv1.Protocol_PROTOCOL_UNSPECIFIED
	}
}
