package fsm

import (
	"fmt"
	"net"
	"net/netip"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	raftlbv1 "github.com/raftlb/raftlb/proto/raftlb/v1"
)

// Defaults filled in when a service is created or updated; they follow IPVS
// and Maglev.
const (
	DefaultTCPEstablishedSeconds = 900
	DefaultTCPFinSeconds         = 120
	DefaultTCPCloseSeconds       = 10
	DefaultUDPSeconds            = 300
	DefaultMaglevTableSize       = 65537
	DefaultHealthIntervalMs      = 2000
	DefaultHealthTimeoutMs       = 1000
	DefaultHealthRise            = 2
	DefaultHealthFall            = 3
	DefaultHealthPath            = "/"
	DefaultHealthExpectedStatus  = 200
)

// Limits checked by ValidateCommand.
const (
	MaxTimeoutSeconds     = 7 * 24 * 3600
	MaxPersistenceSeconds = 24 * 3600
	// Maglev tables are prime-sized; the bounds keep a table meaningful
	// (well above the realserver count) and its BPF map affordable.
	MinMaglevTableSize  = 251
	MaxMaglevTableSize  = 1000003
	MinHealthIntervalMs = 100
	MaxHealthIntervalMs = 3600 * 1000
	MaxHealthRiseFall   = 100
	MaxWeight           = 65535
	maxIDLen            = 128
	maxPathLen          = 1024
	maxMessageLen       = 4096
	// Bounds on what an agent, the least trusted role, may have replicated.
	MaxAgentInterfaces     = 64
	MaxAgentInterfaceAddrs = 64
	MaxAgentVIPResults     = 4096
)

// ValidateCommand checks a command without looking at any state: formats,
// ranges and required fields. It returns nil or an *Error (InvalidArgument,
// or Internal for a command with no known operation) whose field is a path in
// the request, e.g. "service.key.vip". Apply runs the same checks again
// (validateCommand), so a rule there may only be relaxed between versions,
// never tightened, or replicas replaying an old log would disagree. Limits
// added later are checked only here, before a command is proposed
// (validateProposal), so an entry or snapshot written before them still
// applies and restores the same way everywhere.
func ValidateCommand(c *raftlbv1.Command) error {
	if err := validateCommand(c); err != nil {
		return err
	}
	if err := validateProposal(c); err != nil {
		return err
	}
	return nil
}

// validateProposal checks the limits that Apply does not re-check: see
// ValidateCommand.
func validateProposal(c *raftlbv1.Command) *Error {
	switch op := c.GetOp().(type) {
	case *raftlbv1.Command_CreateService:
		return validateTableSize("service.maglev_table_size", op.CreateService.GetService().GetMaglevTableSize())
	case *raftlbv1.Command_UpdateService:
		return validateTableSize("service.maglev_table_size", op.UpdateService.GetService().GetMaglevTableSize())
	case *raftlbv1.Command_RegisterAgent:
		ifcs := op.RegisterAgent.GetInterfaces()
		if len(ifcs) > MaxAgentInterfaces {
			return invalid("interfaces", "%d interfaces exceed the limit of %d", len(ifcs), MaxAgentInterfaces)
		}
		for i, ifc := range ifcs {
			if n := len(ifc.GetAddresses()); n > MaxAgentInterfaceAddrs {
				return invalid(fmt.Sprintf("interfaces[%d].addresses", i), "%d addresses exceed the limit of %d", n, MaxAgentInterfaceAddrs)
			}
		}
	case *raftlbv1.Command_ReportAgentStatus:
		if n := len(op.ReportAgentStatus.GetVips()); n > MaxAgentVIPResults {
			return invalid("vips", "%d VIP results exceed the limit of %d", n, MaxAgentVIPResults)
		}
	}
	return nil
}

// validateTableSize refuses a Maglev table size the dataplane would not
// use: every director builds every service's table with its own
// dataplane.Config.TableSize (DefaultMaglevTableSize), so a per-service size
// is not supported yet.
func validateTableSize(field string, m uint32) *Error {
	if m != 0 && m != DefaultMaglevTableSize {
		return invalid(field, "%d is not supported: every service's table has %d entries (leave it 0)", m, DefaultMaglevTableSize)
	}
	return nil
}

func validateCommand(c *raftlbv1.Command) *Error {
	if c == nil {
		return newError(codes.Internal, "", "unknown command: no command")
	}
	switch op := c.GetOp().(type) {
	case *raftlbv1.Command_CreateService:
		return validateCreateService(op.CreateService)
	case *raftlbv1.Command_UpdateService:
		return validateService("service", op.UpdateService.GetService())
	case *raftlbv1.Command_DeleteService:
		return validateKey("key", op.DeleteService.GetKey())
	case *raftlbv1.Command_AddRealserver:
		return validateRealserverRequest(op.AddRealserver.GetService(), op.AddRealserver.GetRealserver())
	case *raftlbv1.Command_UpdateRealserver:
		return validateRealserverRequest(op.UpdateRealserver.GetService(), op.UpdateRealserver.GetRealserver())
	case *raftlbv1.Command_RemoveRealserver:
		r := op.RemoveRealserver
		if err := validateKey("service", r.GetService()); err != nil {
			return err
		}
		if err := validateUnicast("address", r.GetAddress()); err != nil {
			return err
		}
		return validatePort("port", r.GetPort(), true)
	case *raftlbv1.Command_SetAddress:
		return validateSetAddress(op.SetAddress.GetAddress())
	case *raftlbv1.Command_UpsertDirector:
		return validateDirector("director", op.UpsertDirector.GetDirector())
	case *raftlbv1.Command_RemoveDirector:
		return validateID("id", op.RemoveDirector.GetId(), true)
	case *raftlbv1.Command_AssignAddresses:
		return validateAssign(op.AssignAddresses)
	case *raftlbv1.Command_ConnectionBatch:
		return validateConnectionBatch(op.ConnectionBatch)
	case *raftlbv1.Command_FlushConnections:
		if v := op.FlushConnections.GetVip(); v != "" {
			return validateUnicast("vip", v)
		}
		return nil
	case *raftlbv1.Command_RegisterAgent:
		return validateRegister(op.RegisterAgent)
	case *raftlbv1.Command_ReportAgentStatus:
		return validateReport(op.ReportAgentStatus)
	case *raftlbv1.Command_HealthVerdicts:
		return validateVerdicts(op.HealthVerdicts)
	default:
		// A log written by a newer version, or a bug: never applied.
		return newError(codes.Internal, "", "unknown command: no known operation (%d bytes of unknown fields)", len(c.ProtoReflect().GetUnknown()))
	}
}

func validateCreateService(r *raftlbv1.CreateServiceRequest) *Error {
	if err := validateService("service", r.GetService()); err != nil {
		return err
	}
	return validateID("preferred_owner", r.GetPreferredOwner(), false)
}

// parseUnicast parses an IPv4 address a director may announce or forward to.
func parseUnicast(s string) (netip.Addr, string) {
	if s == "" {
		return netip.Addr{}, "required"
	}
	a, err := netip.ParseAddr(s)
	if err != nil || !a.Is4() {
		return netip.Addr{}, fmt.Sprintf("%q is not an IPv4 address", s)
	}
	switch {
	case a.IsUnspecified():
		return netip.Addr{}, fmt.Sprintf("%q is the unspecified address", s)
	case a.IsLoopback():
		return netip.Addr{}, fmt.Sprintf("%q is a loopback address", s)
	case a.IsMulticast():
		return netip.Addr{}, fmt.Sprintf("%q is a multicast address", s)
	case a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return netip.Addr{}, fmt.Sprintf("%q is the broadcast address", s)
	case a.IsLinkLocalUnicast():
		return netip.Addr{}, fmt.Sprintf("%q is a link-local address", s)
	}
	return a, ""
}

func validateUnicast(field, s string) *Error {
	if _, reason := parseUnicast(s); reason != "" {
		return invalid(field, "%s", reason)
	}
	return nil
}

func validatePort(field string, p uint32, zeroOK bool) *Error {
	if p == 0 && !zeroOK {
		return invalid(field, "required (1-65535)")
	}
	if p > 65535 {
		return invalid(field, "%d is out of range (1-65535)", p)
	}
	return nil
}

func validateProtocol(field string, p raftlbv1.Protocol) *Error {
	switch p {
	case raftlbv1.Protocol_PROTOCOL_TCP, raftlbv1.Protocol_PROTOCOL_UDP:
		return nil
	case raftlbv1.Protocol_PROTOCOL_UNSPECIFIED:
		return invalid(field, "required (TCP or UDP)")
	}
	return invalid(field, "unknown protocol %d", int32(p))
}

func validateKey(field string, k *raftlbv1.ServiceKey) *Error {
	if k == nil {
		return invalid(field, "required")
	}
	if err := validateUnicast(field+".vip", k.GetVip()); err != nil {
		return err
	}
	if err := validatePort(field+".port", k.GetPort(), false); err != nil {
		return err
	}
	return validateProtocol(field+".protocol", k.GetProtocol())
}

func validateService(field string, s *raftlbv1.VirtualService) *Error {
	if s == nil {
		return invalid(field, "required")
	}
	if err := validateKey(field+".key", s.GetKey()); err != nil {
		return err
	}
	if _, ok := raftlbv1.Scheduler_name[int32(s.GetScheduler())]; !ok {
		return invalid(field+".scheduler", "unknown scheduler %d", int32(s.GetScheduler()))
	}
	t := s.GetTimeouts()
	for _, to := range []struct {
		name string
		v    uint32
	}{
		{"tcp_established_seconds", t.GetTcpEstablishedSeconds()},
		{"tcp_fin_seconds", t.GetTcpFinSeconds()},
		{"tcp_close_seconds", t.GetTcpCloseSeconds()},
		{"udp_seconds", t.GetUdpSeconds()},
	} {
		if to.v > MaxTimeoutSeconds {
			return invalid(field+".timeouts."+to.name, "%d exceeds %d (7 days)", to.v, MaxTimeoutSeconds)
		}
	}
	if p := s.GetPersistenceSeconds(); p > MaxPersistenceSeconds {
		return invalid(field+".persistence_seconds", "%d exceeds %d (1 day)", p, MaxPersistenceSeconds)
	}
	if _, ok := raftlbv1.FailurePolicy_name[int32(s.GetFailurePolicy())]; !ok {
		return invalid(field+".failure_policy", "unknown failure policy %d", int32(s.GetFailurePolicy()))
	}
	if m := s.GetMaglevTableSize(); m != 0 {
		if m < MinMaglevTableSize || m > MaxMaglevTableSize {
			return invalid(field+".maglev_table_size", "%d is out of range (%d-%d)", m, MinMaglevTableSize, MaxMaglevTableSize)
		}
		if !isPrime(m) {
			return invalid(field+".maglev_table_size", "%d is not prime", m)
		}
	}
	return validateHealthCheck(field+".health_check", s.GetHealthCheck())
}

func validateHealthCheck(field string, hc *raftlbv1.HealthCheck) *Error {
	switch hc.GetType() {
	case raftlbv1.HealthCheckType_HEALTH_CHECK_TYPE_UNSPECIFIED, raftlbv1.HealthCheckType_HEALTH_CHECK_TYPE_NONE:
		return nil
	case raftlbv1.HealthCheckType_HEALTH_CHECK_TYPE_TCP,
		raftlbv1.HealthCheckType_HEALTH_CHECK_TYPE_HTTP,
		raftlbv1.HealthCheckType_HEALTH_CHECK_TYPE_HTTPS:
	default:
		return invalid(field+".type", "unknown health check type %d", int32(hc.GetType()))
	}
	// Check the values Apply will store, defaults included, so that an
	// interval below the default timeout is caught here.
	e := withHealthDefaults(hc)
	if e.GetIntervalMs() < MinHealthIntervalMs || e.GetIntervalMs() > MaxHealthIntervalMs {
		return invalid(field+".interval_ms", "%d is out of range (%d-%d)", e.GetIntervalMs(), MinHealthIntervalMs, MaxHealthIntervalMs)
	}
	if e.GetTimeoutMs() >= e.GetIntervalMs() {
		what := ""
		if hc.GetTimeoutMs() == 0 {
			what = " (the default)"
		}
		return invalid(field+".timeout_ms", "%d%s must be less than interval_ms %d", e.GetTimeoutMs(), what, e.GetIntervalMs())
	}
	if e.GetRise() > MaxHealthRiseFall {
		return invalid(field+".rise", "%d is out of range (1-%d)", e.GetRise(), MaxHealthRiseFall)
	}
	if e.GetFall() > MaxHealthRiseFall {
		return invalid(field+".fall", "%d is out of range (1-%d)", e.GetFall(), MaxHealthRiseFall)
	}
	if err := validatePort(field+".port", hc.GetPort(), true); err != nil {
		return err
	}
	if hc.GetType() == raftlbv1.HealthCheckType_HEALTH_CHECK_TYPE_TCP {
		return nil
	}
	p := e.GetPath()
	if !strings.HasPrefix(p, "/") {
		return invalid(field+".path", "%q must start with \"/\"", p)
	}
	if len(p) > maxPathLen {
		return invalid(field+".path", "longer than %d bytes", maxPathLen)
	}
	if strings.ContainsFunc(p, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
		return invalid(field+".path", "%q contains spaces or control characters", p)
	}
	if st := e.GetExpectedStatus(); st < 100 || st > 599 {
		return invalid(field+".expected_status", "%d is not an HTTP status (100-599)", st)
	}
	return nil
}

func validateRealserverRequest(key *raftlbv1.ServiceKey, rs *raftlbv1.Realserver) *Error {
	if err := validateKey("service", key); err != nil {
		return err
	}
	if rs == nil {
		return invalid("realserver", "required")
	}
	if err := validateUnicast("realserver.address", rs.GetAddress()); err != nil {
		return err
	}
	if err := validatePort("realserver.port", rs.GetPort(), true); err != nil {
		return err
	}
	if w := rs.GetWeight(); w > MaxWeight {
		return invalid("realserver.weight", "%d is out of range (0-%d)", w, MaxWeight)
	}
	switch m := rs.GetMethod(); m {
	case raftlbv1.ForwardingMethod_FORWARDING_METHOD_NAT:
	case raftlbv1.ForwardingMethod_FORWARDING_METHOD_DR, raftlbv1.ForwardingMethod_FORWARDING_METHOD_TUN:
		if p := rs.GetPort(); p != 0 && p != key.GetPort() {
			return invalid("realserver.port", "%d differs from the service port %d, which %s cannot change",
				p, key.GetPort(), methodName(m))
		}
	case raftlbv1.ForwardingMethod_FORWARDING_METHOD_UNSPECIFIED:
		return invalid("realserver.method", "required (NAT, TUN or DR)")
	default:
		return invalid("realserver.method", "unknown forwarding method %d", int32(m))
	}
	if _, ok := raftlbv1.AdminState_name[int32(rs.GetAdminState())]; !ok {
		return invalid("realserver.admin_state", "unknown admin state %d", int32(rs.GetAdminState()))
	}
	return nil
}

func methodName(m raftlbv1.ForwardingMethod) string {
	return strings.TrimPrefix(m.String(), "FORWARDING_METHOD_")
}

func validateSetAddress(a *raftlbv1.Address) *Error {
	if a == nil {
		return invalid("address", "required")
	}
	if err := validateUnicast("address.address", a.GetAddress()); err != nil {
		return err
	}
	switch a.GetKind() {
	case raftlbv1.AddressKind_ADDRESS_KIND_VIP, raftlbv1.AddressKind_ADDRESS_KIND_NAT_GATEWAY:
	case raftlbv1.AddressKind_ADDRESS_KIND_UNSPECIFIED:
		return invalid("address.kind", "required (VIP or NAT_GATEWAY)")
	default:
		return invalid("address.kind", "unknown address kind %d", int32(a.GetKind()))
	}
	return validateID("address.preferred_owner", a.GetPreferredOwner(), false)
}

// validateID accepts the names directors and agents are known by: what a
// certificate's common name or a hostname may hold.
func validateID(field, id string, required bool) *Error {
	if id == "" {
		if required {
			return invalid(field, "required")
		}
		return nil
	}
	if len(id) > maxIDLen {
		return invalid(field, "longer than %d bytes", maxIDLen)
	}
	for _, r := range id {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.' || r == ':'
		if !ok {
			return invalid(field, "%q may only contain letters, digits and \"-_.:\"", id)
		}
	}
	return nil
}

func validateHostPort(field, s string) *Error {
	if s == "" {
		return nil
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil || host == "" || port == "" {
		return invalid(field, "%q is not host:port", s)
	}
	return nil
}

func validateDirector(field string, d *raftlbv1.Director) *Error {
	if d == nil {
		return invalid(field, "required")
	}
	if err := validateID(field+".id", d.GetId(), true); err != nil {
		return err
	}
	for _, hp := range []struct{ name, v string }{
		{"api_address", d.GetApiAddress()},
		{"raft_address", d.GetRaftAddress()},
		{"gossip_address", d.GetGossipAddress()},
	} {
		if err := validateHostPort(field+"."+hp.name, hp.v); err != nil {
			return err
		}
	}
	if f := d.GetFrontAddress(); f != "" {
		return validateUnicast(field+".front_address", f)
	}
	return nil
}

func validateAssign(a *raftlbv1.AssignAddresses) *Error {
	if len(a.GetAddresses()) == 0 {
		return invalid("addresses", "required")
	}
	seen := make(map[string]bool, len(a.GetAddresses()))
	for i, ad := range a.GetAddresses() {
		f := fmt.Sprintf("addresses[%d]", i)
		if err := validateUnicast(f+".address", ad.GetAddress()); err != nil {
			return err
		}
		if seen[ad.GetAddress()] {
			return invalid(f+".address", "%s is listed twice", ad.GetAddress())
		}
		seen[ad.GetAddress()] = true
		if err := validateID(f+".owner", ad.GetOwner(), true); err != nil {
			return err
		}
		if ad.GetEpoch() == 0 {
			return invalid(f+".epoch", "required (the current epoch plus one)")
		}
	}
	return nil
}

func validateConnEntry(field string, e *raftlbv1.ConnEntry, keyOnly bool) *Error {
	if e == nil {
		return invalid(field, "required")
	}
	if err := validateProtocol(field+".protocol", e.GetProtocol()); err != nil {
		return err
	}
	if err := validatePort(field+".client_port", e.GetClientPort(), true); err != nil {
		return err
	}
	if err := validatePort(field+".vport", e.GetVport(), true); err != nil {
		return err
	}
	if keyOnly {
		return nil
	}
	if err := validatePort(field+".realserver_port", e.GetRealserverPort(), true); err != nil {
		return err
	}
	if _, ok := raftlbv1.ConnectionState_name[int32(e.GetState())]; !ok {
		return invalid(field+".state", "unknown connection state %d", int32(e.GetState()))
	}
	return nil
}

// validateConnectionBatch checks every entry. A batch carries thousands of
// them and every director validates each batch, so the common case takes
// the allocation-free connEntryValid; only an invalid entry is examined
// again to name its field.
func validateConnectionBatch(b *raftlbv1.ConnectionBatch) *Error {
	for i, e := range b.GetUpserts() {
		if !connEntryValid(e, false) {
			return validateConnEntry(fmt.Sprintf("upserts[%d]", i), e, false)
		}
	}
	for i, e := range b.GetDeletes() {
		if !connEntryValid(e, true) {
			return validateConnEntry(fmt.Sprintf("deletes[%d]", i), e, true)
		}
	}
	return nil
}

// connEntryValid reports whether validateConnEntry would accept e.
func connEntryValid(e *raftlbv1.ConnEntry, keyOnly bool) bool {
	switch {
	case e == nil,
		e.GetProtocol() != raftlbv1.Protocol_PROTOCOL_TCP && e.GetProtocol() != raftlbv1.Protocol_PROTOCOL_UDP,
		e.GetClientPort() > 65535, e.GetVport() > 65535:
		return false
	case keyOnly:
		return true
	}
	_, ok := raftlbv1.ConnectionState_name[int32(e.GetState())]
	return ok && e.GetRealserverPort() <= 65535
}

// parseIfaceAddr accepts "192.0.2.11" or "192.0.2.11/24", IPv4 or IPv6: an
// agent reports what its interfaces carry.
func parseIfaceAddr(s string) (netip.Addr, bool) {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Addr(), true
	}
	a, err := netip.ParseAddr(s)
	return a, err == nil
}

func validateRegister(r *raftlbv1.RegisterRequest) *Error {
	if err := validateID("id", r.GetId(), true); err != nil {
		return err
	}
	for i, ifc := range r.GetInterfaces() {
		f := fmt.Sprintf("interfaces[%d]", i)
		if n := ifc.GetName(); n == "" || len(n) > 15 {
			return invalid(f+".name", "%q is not an interface name", n)
		}
		if m := ifc.GetMac(); m != "" {
			if _, err := net.ParseMAC(m); err != nil {
				return invalid(f+".mac", "%q is not a MAC address", m)
			}
		}
		for j, a := range ifc.GetAddresses() {
			if _, ok := parseIfaceAddr(a); !ok {
				return invalid(fmt.Sprintf("%s.addresses[%d]", f, j), "%q is not an IP address or prefix", a)
			}
		}
	}
	return nil
}

func validateReport(r *raftlbv1.ReportStatusRequest) *Error {
	if err := validateID("id", r.GetId(), true); err != nil {
		return err
	}
	for i, v := range r.GetVips() {
		f := fmt.Sprintf("vips[%d]", i)
		if err := validateUnicast(f+".vip", v.GetVip()); err != nil {
			return err
		}
		if len(v.GetError()) > maxMessageLen {
			return invalid(f+".error", "longer than %d bytes", maxMessageLen)
		}
	}
	switch m := r.GetDecapMode(); m {
	case "", "ipip", "bpf":
	default:
		return invalid("decap_mode", "%q is not \"ipip\" or \"bpf\"", m)
	}
	if len(r.GetError()) > maxMessageLen {
		return invalid("error", "longer than %d bytes", maxMessageLen)
	}
	return nil
}

func validateVerdicts(h *raftlbv1.HealthVerdicts) *Error {
	for i, v := range h.GetVerdicts() {
		f := fmt.Sprintf("verdicts[%d]", i)
		if err := validateKey(f+".service", v.GetService()); err != nil {
			return err
		}
		if err := validateUnicast(f+".address", v.GetAddress()); err != nil {
			return err
		}
		if err := validatePort(f+".port", v.GetPort(), true); err != nil {
			return err
		}
		switch v.GetState() {
		case raftlbv1.HealthState_HEALTH_STATE_UNKNOWN, raftlbv1.HealthState_HEALTH_STATE_UP, raftlbv1.HealthState_HEALTH_STATE_DOWN:
		default:
			return invalid(f+".state", "must be UNKNOWN, UP or DOWN")
		}
	}
	return nil
}

func isPrime(n uint32) bool {
	if n < 2 {
		return false
	}
	for d := uint32(2); d*d <= n; d++ {
		if n%d == 0 {
			return false
		}
	}
	return true
}

// withHealthDefaults returns a copy of hc with the defaults of its probe type
// filled in; a service without probes keeps only its type (NONE).
func withHealthDefaults(hc *raftlbv1.HealthCheck) *raftlbv1.HealthCheck {
	t := hc.GetType()
	if t == raftlbv1.HealthCheckType_HEALTH_CHECK_TYPE_UNSPECIFIED || t == raftlbv1.HealthCheckType_HEALTH_CHECK_TYPE_NONE {
		return &raftlbv1.HealthCheck{Type: raftlbv1.HealthCheckType_HEALTH_CHECK_TYPE_NONE}
	}
	out := proto.CloneOf(hc)
	setDefault(&out.IntervalMs, DefaultHealthIntervalMs)
	setDefault(&out.TimeoutMs, DefaultHealthTimeoutMs)
	setDefault(&out.Rise, DefaultHealthRise)
	setDefault(&out.Fall, DefaultHealthFall)
	if t == raftlbv1.HealthCheckType_HEALTH_CHECK_TYPE_TCP {
		// A TCP connect has no path or status.
		out.Path, out.ExpectedStatus = "", 0
		return out
	}
	if out.Path == "" {
		out.Path = DefaultHealthPath
	}
	setDefault(&out.ExpectedStatus, DefaultHealthExpectedStatus)
	return out
}

func setDefault(v *uint32, d uint32) {
	if *v == 0 {
		*v = d
	}
}

// withServiceDefaults returns the service as Apply stores it: defaults filled
// in, output-only fields cleared.
func withServiceDefaults(s *raftlbv1.VirtualService) *raftlbv1.VirtualService {
	out := proto.CloneOf(s)
	out.Realservers, out.Stats = nil, nil
	if out.Scheduler == raftlbv1.Scheduler_SCHEDULER_UNSPECIFIED {
		out.Scheduler = raftlbv1.Scheduler_SCHEDULER_MH
	}
	if out.Timeouts == nil {
		out.Timeouts = &raftlbv1.Timeouts{}
	}
	setDefault(&out.Timeouts.TcpEstablishedSeconds, DefaultTCPEstablishedSeconds)
	setDefault(&out.Timeouts.TcpFinSeconds, DefaultTCPFinSeconds)
	setDefault(&out.Timeouts.TcpCloseSeconds, DefaultTCPCloseSeconds)
	setDefault(&out.Timeouts.UdpSeconds, DefaultUDPSeconds)
	setDefault(&out.MaglevTableSize, DefaultMaglevTableSize)
	out.HealthCheck = withHealthDefaults(out.HealthCheck)
	if out.FailurePolicy == raftlbv1.FailurePolicy_FAILURE_POLICY_UNSPECIFIED {
		out.FailurePolicy = raftlbv1.FailurePolicy_FAILURE_POLICY_KEEP
	}
	return out
}
