package server

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"

	"google.golang.org/grpc"

	raftlbv1 "github.com/raftlb/raftlb/proto/raftlb/v1"
	"github.com/raftlb/raftlb/server/pki"
)

// Role sets used in the method table.
var (
	rolesAll     = []pki.Role{pki.RoleDirector, pki.RoleAdmin, pki.RoleReader, pki.RoleAgent}
	rolesRead    = []pki.Role{pki.RoleDirector, pki.RoleAdmin, pki.RoleReader}
	rolesWrite   = []pki.Role{pki.RoleDirector, pki.RoleAdmin}
	rolesAgent   = []pki.Role{pki.RoleDirector, pki.RoleAdmin, pki.RoleAgent}
	rolesCluster = []pki.Role{pki.RoleDirector}
)

// methodRoles says who may call what in the public API. A method missing
// from the table is refused for everyone: new RPCs must be placed here
// deliberately. Agents are further limited to their own id (see
// authorizeAgent). Every InternalService method is for directors only
// (internalPrefix).
var methodRoles = map[string][]pki.Role{
	raftlbv1.LoadBalancerService_CreateService_FullMethodName:    rolesWrite,
	raftlbv1.LoadBalancerService_UpdateService_FullMethodName:    rolesWrite,
	raftlbv1.LoadBalancerService_DeleteService_FullMethodName:    rolesWrite,
	raftlbv1.LoadBalancerService_GetService_FullMethodName:       rolesRead,
	raftlbv1.LoadBalancerService_ListServices_FullMethodName:     rolesRead,
	raftlbv1.LoadBalancerService_WatchServices_FullMethodName:    rolesRead,
	raftlbv1.LoadBalancerService_AddRealserver_FullMethodName:    rolesWrite,
	raftlbv1.LoadBalancerService_UpdateRealserver_FullMethodName: rolesWrite,
	raftlbv1.LoadBalancerService_RemoveRealserver_FullMethodName: rolesWrite,
	raftlbv1.LoadBalancerService_ListRealservers_FullMethodName:  rolesRead,

	raftlbv1.ClusterService_GetStatus_FullMethodName:      rolesRead,
	raftlbv1.ClusterService_JoinDirector_FullMethodName:   rolesWrite,
	raftlbv1.ClusterService_RemoveDirector_FullMethodName: rolesWrite,
	raftlbv1.ClusterService_SetAddress_FullMethodName:     rolesWrite,
	raftlbv1.ClusterService_ListAddresses_FullMethodName:  rolesRead,
	raftlbv1.ClusterService_MoveVip_FullMethodName:        rolesWrite,

	raftlbv1.AgentService_Register_FullMethodName:     rolesAgent,
	raftlbv1.AgentService_WatchConfig_FullMethodName:  rolesAgent,
	raftlbv1.AgentService_ReportStatus_FullMethodName: rolesAgent,
	raftlbv1.AgentService_ListAgents_FullMethodName:   rolesRead,

	raftlbv1.ConnectionService_ListConnections_FullMethodName:  rolesRead,
	raftlbv1.ConnectionService_FlushConnections_FullMethodName: rolesWrite,

	"/grpc.health.v1.Health/Check": rolesAll,
	"/grpc.health.v1.Health/Watch": rolesAll,
	"/grpc.health.v1.Health/List":  rolesAll,

	"/grpc.reflection.v1.ServerReflection/ServerReflectionInfo":      rolesRead,
	"/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": rolesRead,
}

// internalPrefix covers the director-to-director service, whatever RPCs it grows.
var internalPrefix = "/" + raftlbv1.InternalService_ServiceDesc.ServiceName + "/"

type identityKey struct{}

// identityFrom returns the caller's identity as authorized by the interceptor.
func identityFrom(ctx context.Context) (pki.Identity, bool) {
	id, ok := ctx.Value(identityKey{}).(pki.Identity)
	return id, ok
}

// authorizer enforces methodRoles where calls enter.
type authorizer struct {
	insecure bool
}

// insecureIdentity is every caller in Insecure mode: a director, so that
// followers can forward to the leader without certificates.
var insecureIdentity = pki.Identity{Role: pki.RoleDirector, Name: "insecure"}

func (a *authorizer) identify(ctx context.Context) (pki.Identity, error) {
	if a.insecure {
		return insecureIdentity, nil
	}
	id, err := pki.IdentityFromContext(ctx)
	if err != nil {
		return pki.Identity{}, fmt.Errorf("identify caller: %w", err)
	}
	return id, nil
}

// authorize checks the role for method and, for an agent, the request.
// req is nil for a stream whose first message has not arrived yet.
func authorize(id pki.Identity, method string, req any) error {
	roles, ok := methodRoles[method]
	if strings.HasPrefix(method, internalPrefix) {
		roles, ok = rolesCluster, true
	}
	if !ok || !slices.Contains(roles, id.Role) {
		return fmt.Errorf("call %s as %s %q: %w", method, id.Role, id.Name, ErrPermissionDenied)
	}
	if id.Role == pki.RoleAgent && req != nil {
		return authorizeAgent(id, req)
	}
	return nil
}

// authorizeAgent limits an agent to its own id and to registering only
// addresses its certificate names.
func authorizeAgent(id pki.Identity, req any) error {
	r, ok := req.(interface{ GetId() string })
	if !ok {
		return fmt.Errorf("authorize agent %q: request carries no id: %w", id.Name, ErrPermissionDenied)
	}
	if r.GetId() != id.Name {
		return fmt.Errorf("authorize agent %q: id %q is not the certificate's: %w", id.Name, r.GetId(), ErrPermissionDenied)
	}
	reg, ok := req.(*raftlbv1.RegisterRequest)
	if !ok {
		return nil
	}
	for i, itf := range reg.GetInterfaces() {
		for _, a := range itf.GetAddresses() {
			ip, err := parseAddr(a)
			if err != nil {
				return fmt.Errorf("authorize agent %q: interfaces[%d].addresses %q: %w", id.Name, i, a, ErrPermissionDenied)
			}
			if !slices.ContainsFunc(id.IPs, func(san net.IP) bool {
				s, ok := netip.AddrFromSlice(san)
				return ok && s.Unmap() == ip.Unmap()
			}) {
				return fmt.Errorf("authorize agent %q: interfaces[%d].addresses %s is not in the certificate's IP SANs: %w",
					id.Name, i, a, ErrPermissionDenied)
			}
		}
	}
	return nil
}

// parseAddr accepts an address with or without a prefix length.
func parseAddr(s string) (netip.Addr, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Addr{}, err
		}
		return p.Addr(), nil
	}
	return netip.ParseAddr(s)
}

func (a *authorizer) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	id, err := a.identify(ctx)
	if err != nil {
		return nil, err
	}
	if err := authorize(id, info.FullMethod, req); err != nil {
		return nil, err
	}
	return handler(context.WithValue(ctx, identityKey{}, id), req)
}

func (a *authorizer) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	id, err := a.identify(ss.Context())
	if err != nil {
		return err
	}
	if err := authorize(id, info.FullMethod, nil); err != nil {
		return err
	}
	return handler(srv, &authorizedStream{
		ServerStream: ss,
		ctx:          context.WithValue(ss.Context(), identityKey{}, id),
		id:           id,
		method:       info.FullMethod,
	})
}

// authorizedStream checks each received message of an agent's stream
// against its identity and carries the identity in its context.
type authorizedStream struct {
	grpc.ServerStream
	ctx    context.Context
	id     pki.Identity
	method string
}

func (s *authorizedStream) Context() context.Context { return s.ctx }

func (s *authorizedStream) RecvMsg(m any) error {
	if err := s.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	return authorize(s.id, s.method, m)
}
