package fsm

import (
	"fmt"
	"net/netip"

	"google.golang.org/protobuf/proto"

	raftlbv1 "github.com/raftlb/raftlb/proto/raftlb/v1"
)

// txn applies one validated command. Each handler checks everything against
// the state before it changes anything, so a rejected command leaves the
// state as it was.
type txn struct {
	s        *state
	cmd      *raftlbv1.Command
	maxConns int
	conns    *ConnChange
	// config is set when the desired configuration changed: the generation
	// moves and watchers wake.
	config bool
}

func (t *txn) apply() (*raftlbv1.Result, error) {
	switch op := t.cmd.GetOp().(type) {
	case *raftlbv1.Command_CreateService:
		return t.createService(op.CreateService)
	case *raftlbv1.Command_UpdateService:
		return t.updateService(op.UpdateService)
	case *raftlbv1.Command_DeleteService:
		return t.deleteService(op.DeleteService)
	case *raftlbv1.Command_AddRealserver:
		return t.addRealserver(op.AddRealserver)
	case *raftlbv1.Command_UpdateRealserver:
		return t.updateRealserver(op.UpdateRealserver)
	case *raftlbv1.Command_RemoveRealserver:
		return t.removeRealserver(op.RemoveRealserver)
	case *raftlbv1.Command_SetAddress:
		return t.setAddress(op.SetAddress.GetAddress())
	case *raftlbv1.Command_UpsertDirector:
		return t.upsertDirector(op.UpsertDirector.GetDirector())
	case *raftlbv1.Command_RemoveDirector:
		return t.removeDirector(op.RemoveDirector.GetId())
	case *raftlbv1.Command_AssignAddresses:
		return t.assignAddresses(op.AssignAddresses)
	case *raftlbv1.Command_ConnectionBatch:
		t.s.applyConnBatch(op.ConnectionBatch, t.cmd.GetOrigin(), t.maxConns, t.conns)
		return &raftlbv1.Result{}, nil
	case *raftlbv1.Command_FlushConnections:
		return t.flushConnections(op.FlushConnections)
	case *raftlbv1.Command_RegisterAgent:
		return t.registerAgent(op.RegisterAgent)
	case *raftlbv1.Command_ReportAgentStatus:
		return t.reportAgentStatus(op.ReportAgentStatus)
	case *raftlbv1.Command_HealthVerdicts:
		return t.healthVerdicts(op.HealthVerdicts)
	}
	// validateCommand has already refused anything else.
	return nil, ErrInternal
}

// preferredOwner checks a requested preferred owner: empty, or a director
// that may own addresses.
// service finds the service a realserver command addresses.
func (t *txn) service(k svcKey) (*service, error) {
	sv, ok := t.s.services[k]
	if !ok {
		return nil, notFound("service", "service %s not found", k)
	}
	return sv, nil
}

func (t *txn) preferredOwner(field, id string) error {
	if id == "" {
		return nil
	}
	d, ok := t.s.directors[id]
	if !ok {
		return precondition(field, "director %q is not known", id)
	}
	if d.GetWitness() {
		return precondition(field, "director %q is a witness and never owns an address", id)
	}
	return nil
}

// createService adds a service and, for the first service on its VIP, the
// VIP's address. A VIP address exists exactly while a service uses it.
func (t *txn) createService(r *raftlbv1.CreateServiceRequest) (*raftlbv1.Result, error) {
	def := withServiceDefaults(r.GetService())
	k, _ := keyOf(def.GetKey())
	if _, ok := t.s.services[k]; ok {
		return nil, alreadyExists("service.key", "service %s already exists", k)
	}
	pref := r.GetPreferredOwner()
	if err := t.preferredOwner("preferred_owner", pref); err != nil {
		return nil, err
	}
	if a, ok := t.s.addresses[k.vip]; ok {
		if a.GetKind() != raftlbv1.AddressKind_ADDRESS_KIND_VIP {
			return nil, precondition("service.key.vip", "%s is the NAT gateway address", k.vip)
		}
		if pref != "" && pref != a.GetPreferredOwner() {
			return nil, precondition("preferred_owner", "VIP %s already prefers %q; change it with SetAddress", k.vip, a.GetPreferredOwner())
		}
	} else {
		if err := t.s.checkAnnounced("service.key.vip", k.vip); err != nil {
			return nil, err
		}
		// Starting the epoch at the generation that creates the address means
		// an address deleted and created again never reuses an epoch.
		t.s.addresses[k.vip] = &raftlbv1.Address{
			Address:        k.vip.String(),
			Kind:           raftlbv1.AddressKind_ADDRESS_KIND_VIP,
			PreferredOwner: pref,
			Owner:          t.s.pickOwner(pref),
			Epoch:          t.s.generation + 1,
		}
	}
	sv := &service{def: def, rs: make(map[rsKey]*raftlbv1.Realserver)}
	t.s.services[k] = sv
	t.config = true
	return &raftlbv1.Result{Service: sv.view()}, nil
}

// updateService replaces a service's definition and keeps its realservers.
// A changed health check resets their verdicts: the old ones came from other
// probes (and with no probes at all a DOWN would never clear).
func (t *txn) updateService(r *raftlbv1.UpdateServiceRequest) (*raftlbv1.Result, error) {
	def := withServiceDefaults(r.GetService())
	k, _ := keyOf(def.GetKey())
	sv, ok := t.s.services[k]
	if !ok {
		return nil, notFound("service.key", "service %s not found", k)
	}
	if proto.Equal(sv.def, def) {
		return &raftlbv1.Result{Service: sv.view()}, nil
	}
	if !proto.Equal(sv.def.GetHealthCheck(), def.GetHealthCheck()) {
		for _, rs := range sv.rs {
			rs.Health = raftlbv1.HealthState_HEALTH_STATE_UNKNOWN
		}
	}
	sv.def = def
	t.config = true
	return &raftlbv1.Result{Service: sv.view()}, nil
}

// deleteService removes a service, its realservers and its connections, and
// the VIP's address with its last service.
func (t *txn) deleteService(r *raftlbv1.DeleteServiceRequest) (*raftlbv1.Result, error) {
	k, _ := keyOf(r.GetKey())
	if _, ok := t.s.services[k]; !ok {
		return nil, notFound("key", "service %s not found", k)
	}
	delete(t.s.services, k)
	if !t.s.vipInUse(k.vip) {
		delete(t.s.addresses, k.vip)
	}
	vip := IPv4ToUint32(k.vip)
	t.s.deleteConns(func(c connKey) bool {
		return c.vip == vip && c.vport == k.port && c.proto == k.proto
	}, t.conns)
	t.config = true
	return &raftlbv1.Result{}, nil
}

// realserverFor normalizes a realserver of service k as stored.
func realserverFor(k svcKey, in *raftlbv1.Realserver) (rsKey, *raftlbv1.Realserver) {
	a, _ := parseUnicast(in.GetAddress())
	port := uint16(in.GetPort())
	if port == 0 {
		port = k.port
	}
	admin := in.GetAdminState()
	if admin == raftlbv1.AdminState_ADMIN_STATE_UNSPECIFIED {
		admin = raftlbv1.AdminState_ADMIN_STATE_ACTIVE
	}
	return rsKey{addr: a, port: port}, &raftlbv1.Realserver{
		Address:    a.String(),
		Port:       uint32(port),
		Weight:     in.GetWeight(),
		Method:     in.GetMethod(),
		AdminState: admin,
		Health:     raftlbv1.HealthState_HEALTH_STATE_UNKNOWN,
	}
}

// addRealserver adds a realserver; weight 0 is a valid, quiesced realserver
// (LVS semantics), so callers that mean "default" must send 1.
func (t *txn) addRealserver(r *raftlbv1.AddRealserverRequest) (*raftlbv1.Result, error) {
	k, _ := keyOf(r.GetService())
	sv, err := t.service(k)
	if err != nil {
		return nil, err
	}
	rk, rs := realserverFor(k, r.GetRealserver())
	if _, ok := sv.rs[rk]; ok {
		return nil, alreadyExists("realserver", "realserver %s already exists in service %s", netip.AddrPortFrom(rk.addr, rk.port), k)
	}
	if err := t.s.checkRealserver("realserver.address", rk.addr); err != nil {
		return nil, err
	}
	sv.rs[rk] = rs
	t.s.alignNATGroup()
	t.config = true
	return &raftlbv1.Result{Realserver: proto.CloneOf(rs)}, nil
}

// updateRealserver replaces weight, method and admin state; health is kept.
func (t *txn) updateRealserver(r *raftlbv1.UpdateRealserverRequest) (*raftlbv1.Result, error) {
	k, _ := keyOf(r.GetService())
	sv, err := t.service(k)
	if err != nil {
		return nil, err
	}
	rk, next := realserverFor(k, r.GetRealserver())
	cur, ok := sv.rs[rk]
	if !ok {
		return nil, notFound("realserver", "realserver %s not found in service %s", netip.AddrPortFrom(rk.addr, rk.port), k)
	}
	next.Health = cur.GetHealth()
	if proto.Equal(cur, next) {
		return &raftlbv1.Result{Realserver: proto.CloneOf(cur)}, nil
	}
	sv.rs[rk] = next
	t.s.alignNATGroup()
	t.config = true
	return &raftlbv1.Result{Realserver: proto.CloneOf(next)}, nil
}

func (t *txn) removeRealserver(r *raftlbv1.RemoveRealserverRequest) (*raftlbv1.Result, error) {
	k, _ := keyOf(r.GetService())
	sv, err := t.service(k)
	if err != nil {
		return nil, err
	}
	rk, _ := realserverFor(k, &raftlbv1.Realserver{Address: r.GetAddress(), Port: r.GetPort()})
	if _, ok := sv.rs[rk]; !ok {
		return nil, notFound("address", "realserver %s not found in service %s", netip.AddrPortFrom(rk.addr, rk.port), k)
	}
	delete(sv.rs, rk)
	t.config = true
	return &raftlbv1.Result{}, nil
}

// setAddress sets a VIP's preferred owner, or declares the NAT gateway.
// There is one gateway: declaring another address replaces it, and the new
// one keeps the NAT group's owner. Changing a preference moves nothing
// (moves are explicit).
func (t *txn) setAddress(in *raftlbv1.Address) (*raftlbv1.Result, error) {
	a, _ := parseUnicast(in.GetAddress())
	if err := t.preferredOwner("address.preferred_owner", in.GetPreferredOwner()); err != nil {
		return nil, err
	}
	cur, exists := t.s.addresses[a]
	switch in.GetKind() {
	case raftlbv1.AddressKind_ADDRESS_KIND_VIP:
		if !exists {
			return nil, notFound("address.address", "no service uses VIP %s; create one first", a)
		}
		if cur.GetKind() != raftlbv1.AddressKind_ADDRESS_KIND_VIP {
			return nil, precondition("address.kind", "%s is the NAT gateway address", a)
		}
	default: // NAT gateway
		if exists && cur.GetKind() != raftlbv1.AddressKind_ADDRESS_KIND_NAT_GATEWAY {
			return nil, precondition("address.kind", "%s is a VIP", a)
		}
		if !exists {
			if err := t.s.checkAnnounced("address.address", a); err != nil {
				return nil, err
			}
			owner := groupOwner(t.s.natGroup())
			if old := t.s.gateway(); old != nil {
				delete(t.s.addresses, netip.MustParseAddr(old.GetAddress()))
			}
			if owner == "" {
				owner = t.s.pickOwner(in.GetPreferredOwner())
			}
			cur = &raftlbv1.Address{
				Address: a.String(),
				Kind:    raftlbv1.AddressKind_ADDRESS_KIND_NAT_GATEWAY,
				Owner:   owner,
				Epoch:   t.s.generation + 1,
			}
			t.s.addresses[a] = cur
			t.config = true
		}
	}
	if cur.GetPreferredOwner() != in.GetPreferredOwner() {
		cur.PreferredOwner = in.GetPreferredOwner()
		t.config = true
	}
	if t.s.alignNATGroup() {
		t.config = true
	}
	return &raftlbv1.Result{Address: proto.CloneOf(cur)}, nil
}

// upsertDirector records a director's announcement. A director that became
// a witness loses its addresses. Nothing is assigned here: an address
// without an owner may still be answered by its last owner until that
// one's lease runs out, which only the leader's reassigner can tell.
func (t *txn) upsertDirector(d *raftlbv1.Director) (*raftlbv1.Result, error) {
	d = proto.CloneOf(d)
	if cur, ok := t.s.directors[d.GetId()]; !ok || !proto.Equal(cur, d) {
		t.s.directors[d.GetId()] = d
		t.config = true
	}
	if t.s.disownNonDirectors() {
		t.config = true
	}
	return &raftlbv1.Result{}, nil
}

// removeDirector forgets a director. Its addresses become unowned rather
// than moving at once: it may still be forwarding, and the next owner must
// wait until it surely is not. The leader's reassigner assigns them once the
// old lease has surely run out.
func (t *txn) removeDirector(id string) (*raftlbv1.Result, error) {
	if _, ok := t.s.directors[id]; !ok {
		return nil, notFound("id", "director %q not found", id)
	}
	delete(t.s.directors, id)
	for _, a := range t.s.addresses {
		if a.GetOwner() == id {
			setOwner(a, "")
		}
	}
	t.config = true
	return &raftlbv1.Result{}, nil
}

// assignAddresses sets owners, each with an epoch one above the address's
// current one. The NAT group moves as a whole: members not listed follow
// (their epochs move too), and listing two members with different owners is
// refused.
func (t *txn) assignAddresses(r *raftlbv1.AssignAddresses) (*raftlbv1.Result, error) {
	group := t.s.natGroup()
	inGroup := make(map[string]bool, len(group))
	for _, a := range group {
		inGroup[a.GetAddress()] = true
	}
	groupTo := ""
	for i, in := range r.GetAddresses() {
		f := fmt.Sprintf("addresses[%d]", i)
		a, _ := parseUnicast(in.GetAddress())
		cur, ok := t.s.addresses[a]
		if !ok {
			return nil, notFound(f+".address", "address %s not found", a)
		}
		if in.GetEpoch() != cur.GetEpoch()+1 {
			return nil, precondition(f+".epoch", "%d is not the current epoch %d plus one", in.GetEpoch(), cur.GetEpoch())
		}
		if !t.s.fullDirector(in.GetOwner()) {
			return nil, precondition(f+".owner", "%q is not a director that may own addresses", in.GetOwner())
		}
		if inGroup[cur.GetAddress()] {
			if groupTo != "" && groupTo != in.GetOwner() {
				return nil, precondition(f+".owner", "the NAT group moves as a whole, to %q or to %q, not both", groupTo, in.GetOwner())
			}
			groupTo = in.GetOwner()
		}
	}
	for _, in := range r.GetAddresses() {
		a, _ := parseUnicast(in.GetAddress())
		cur := t.s.addresses[a]
		cur.Owner, cur.Epoch = in.GetOwner(), in.GetEpoch()
	}
	if groupTo != "" {
		listed := make(map[string]bool, len(r.GetAddresses()))
		for _, in := range r.GetAddresses() {
			listed[in.GetAddress()] = true
		}
		for _, a := range group {
			if !listed[a.GetAddress()] {
				setOwner(a, groupTo)
			}
		}
	}
	t.config = true
	return &raftlbv1.Result{}, nil
}

func (t *txn) flushConnections(r *raftlbv1.FlushConnectionsRequest) (*raftlbv1.Result, error) {
	t.conns.Flush = true
	if r.GetVip() == "" {
		t.s.deleteConns(func(connKey) bool { return true }, t.conns)
		return &raftlbv1.Result{}, nil
	}
	a, _ := parseUnicast(r.GetVip())
	t.conns.FlushVIP = a
	vip := IPv4ToUint32(a)
	t.s.deleteConns(func(c connKey) bool { return c.vip == vip }, t.conns)
	return &raftlbv1.Result{}, nil
}

// registerAgent records an agent's interfaces, keeping its last report.
// A registration with unchanged interfaces is only a sign of life.
func (t *txn) registerAgent(r *raftlbv1.RegisterRequest) (*raftlbv1.Result, error) {
	ag, ok := t.s.agents[r.GetId()]
	if !ok {
		ag = &raftlbv1.AgentInfo{Id: r.GetId()}
		t.s.agents[r.GetId()] = ag
		t.config = true
	}
	next := &raftlbv1.AgentInfo{Interfaces: r.GetInterfaces()}
	if !proto.Equal(&raftlbv1.AgentInfo{Interfaces: ag.GetInterfaces()}, next) {
		ag.Interfaces = proto.CloneOf(next).GetInterfaces()
		t.config = true
	}
	ag.LastSeenUnixMs = t.cmd.GetUnixNano() / 1e6
	return &raftlbv1.Result{}, nil
}

// reportAgentStatus records what an agent applied. Status is not
// configuration: the generation stays, or agents would chase their reports.
func (t *txn) reportAgentStatus(r *raftlbv1.ReportStatusRequest) (*raftlbv1.Result, error) {
	ag, ok := t.s.agents[r.GetId()]
	if !ok {
		return nil, notFound("id", "agent %q is not registered", r.GetId())
	}
	ag.AppliedGeneration = r.GetAppliedGeneration()
	ag.Vips = proto.CloneOf(&raftlbv1.ReportStatusRequest{Vips: r.GetVips()}).GetVips()
	ag.DecapMode = r.GetDecapMode()
	ag.Error = r.GetError()
	ag.LastSeenUnixMs = t.cmd.GetUnixNano() / 1e6
	return &raftlbv1.Result{}, nil
}

// healthVerdicts records verdicts. One for a service or realserver that is
// gone (removed while it was being probed) is skipped, not an error. A
// realserver going down in a service whose failure policy is reschedule or
// drop loses its replicated connections, so no director keeps (or, taking
// over, installs) them; each dataplane drops its own entries likewise.
func (t *txn) healthVerdicts(h *raftlbv1.HealthVerdicts) (*raftlbv1.Result, error) {
	for _, v := range h.GetVerdicts() {
		k, _ := keyOf(v.GetService())
		sv, ok := t.s.services[k]
		if !ok {
			continue
		}
		rk, _ := realserverFor(k, &raftlbv1.Realserver{Address: v.GetAddress(), Port: v.GetPort()})
		rs, ok := sv.rs[rk]
		if !ok || rs.GetHealth() == v.GetState() {
			continue
		}
		rs.Health = v.GetState()
		t.config = true
		switch sv.def.GetFailurePolicy() {
		case raftlbv1.FailurePolicy_FAILURE_POLICY_RESCHEDULE, raftlbv1.FailurePolicy_FAILURE_POLICY_DROP:
			if v.GetState() != raftlbv1.HealthState_HEALTH_STATE_DOWN {
				break
			}
			vip, rip := IPv4ToUint32(k.vip), IPv4ToUint32(rk.addr)
			t.s.deleteConns(func(c connKey) bool {
				if c.vip != vip || c.vport != k.port || c.proto != k.proto {
					return false
				}
				cv := t.s.conns[c]
				return cv.rip == rip && cv.rport == rk.port
			}, t.conns)
		}
	}
	return &raftlbv1.Result{}, nil
}
