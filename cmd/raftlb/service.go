package main

import (
	"context"
	"fmt"
	"io"
	"math"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"google.golang.org/grpc"

	raftlbv1 "github.com/raftlb/raftlb/proto/raftlb/v1"
)

// keyFlags select a virtual service.
type keyFlags struct {
	vip   string
	port  uint32
	proto string
}

func (k *keyFlags) add(cmd *cobra.Command) {
	fs := cmd.Flags()
	fs.StringVar(&k.vip, "vip", "", "virtual IPv4 address")
	fs.Uint32Var(&k.port, "port", 0, "virtual port")
	fs.StringVar(&k.proto, "proto", "tcp", "protocol: "+protocolWords.list())
	_ = cmd.MarkFlagRequired("vip")
	_ = cmd.MarkFlagRequired("port")
}

func (k *keyFlags) key() (*raftlbv1.ServiceKey, error) {
	p, err := protocolWords.parse("proto", k.proto)
	if err != nil {
		return nil, err
	}
	return &raftlbv1.ServiceKey{Vip: k.vip, Port: k.port, Protocol: p}, nil
}

// serviceFlags are a service's settings; only the ones given change anything.
type serviceFlags struct {
	scheduler      string
	persistence    uint32
	tcpEstablished uint32
	tcpFin         uint32
	tcpClose       uint32
	udp            uint32
	health         string
	healthInterval time.Duration
	healthTimeout  time.Duration
	rise, fall     uint32
	healthPath     string
	healthStatus   uint32
	healthPort     uint32
	failurePolicy  string
	maglevSize     uint32
}

func (f *serviceFlags) add(fs *pflag.FlagSet) {
	fs.StringVar(&f.scheduler, "scheduler", "", "scheduler: "+schedulerWords.list()+" (default mh)")
	fs.Uint32Var(&f.persistence, "persistence", 0, "client affinity in seconds; 0 turns it off")
	fs.Uint32Var(&f.tcpEstablished, "timeout-established", 0, "established TCP entry timeout, seconds (default 900)")
	fs.Uint32Var(&f.tcpFin, "timeout-fin", 0, "TCP entry timeout after a FIN, seconds (default 120)")
	fs.Uint32Var(&f.tcpClose, "timeout-close", 0, "TCP entry timeout after an RST, seconds (default 10)")
	fs.Uint32Var(&f.udp, "timeout-udp", 0, "UDP entry timeout, seconds (default 300)")
	fs.StringVar(&f.health, "health", "", "health check: "+healthWords.list()+" (default none)")
	fs.DurationVar(&f.healthInterval, "health-interval", 0, "time between probes (default 2s)")
	fs.DurationVar(&f.healthTimeout, "health-timeout", 0, "time a probe may take (default 1s)")
	fs.Uint32Var(&f.rise, "rise", 0, "consecutive successes that mark a realserver up (default 2)")
	fs.Uint32Var(&f.fall, "fall", 0, "consecutive failures that mark it down (default 3)")
	fs.StringVar(&f.healthPath, "health-path", "", `HTTP(S) path to probe (default "/")`)
	fs.Uint32Var(&f.healthStatus, "health-status", 0, "expected HTTP status (default 200)")
	fs.Uint32Var(&f.healthPort, "health-port", 0, "port to probe (default the realserver's)")
	fs.StringVar(&f.failurePolicy, "failure-policy", "", "what happens to a failed realserver's connections: "+failurePolicyWords.list()+" (default keep)")
	fs.Uint32Var(&f.maglevSize, "maglev-size", 0, "Maglev table size; only the default 65537 is supported yet")
}

// apply writes the flags the user set into s.
func (f *serviceFlags) apply(fs *pflag.FlagSet, s *raftlbv1.VirtualService) error {
	set := fs.Changed
	var err error
	if set("scheduler") {
		if s.Scheduler, err = schedulerWords.parse("scheduler", f.scheduler); err != nil {
			return err
		}
	}
	if set("failure-policy") {
		if s.FailurePolicy, err = failurePolicyWords.parse("failure-policy", f.failurePolicy); err != nil {
			return err
		}
	}
	if set("persistence") {
		s.PersistenceSeconds = f.persistence
	}
	if set("maglev-size") {
		s.MaglevTableSize = f.maglevSize
	}
	for name, v := range map[string]struct {
		dst *uint32
		val uint32
	}{
		"timeout-established": {timeoutField(s, func(t *raftlbv1.Timeouts) *uint32 { return &t.TcpEstablishedSeconds }), f.tcpEstablished},
		"timeout-fin":         {timeoutField(s, func(t *raftlbv1.Timeouts) *uint32 { return &t.TcpFinSeconds }), f.tcpFin},
		"timeout-close":       {timeoutField(s, func(t *raftlbv1.Timeouts) *uint32 { return &t.TcpCloseSeconds }), f.tcpClose},
		"timeout-udp":         {timeoutField(s, func(t *raftlbv1.Timeouts) *uint32 { return &t.UdpSeconds }), f.udp},
	} {
		if set(name) {
			*v.dst = v.val
		}
	}
	hc := s.GetHealthCheck()
	if hc == nil {
		hc = &raftlbv1.HealthCheck{}
	}
	touched := false
	if set("health") {
		if hc.Type, err = healthWords.parse("health", f.health); err != nil {
			return err
		}
		touched = true
	}
	for name, d := range map[string]struct {
		dst *uint32
		val time.Duration
	}{"health-interval": {&hc.IntervalMs, f.healthInterval}, "health-timeout": {&hc.TimeoutMs, f.healthTimeout}} {
		if !set(name) {
			continue
		}
		ms, err := millis(name, d.val)
		if err != nil {
			return err
		}
		*d.dst, touched = ms, true
	}
	for name, v := range map[string]struct {
		dst *uint32
		val uint32
	}{"rise": {&hc.Rise, f.rise}, "fall": {&hc.Fall, f.fall}, "health-status": {&hc.ExpectedStatus, f.healthStatus}, "health-port": {&hc.Port, f.healthPort}} {
		if set(name) {
			*v.dst, touched = v.val, true
		}
	}
	if set("health-path") {
		hc.Path, touched = f.healthPath, true
	}
	if touched {
		s.HealthCheck = hc
	}
	// Trimmed so an unchanged timeouts message stays absent rather than all zeros.
	if t := s.GetTimeouts(); t != nil && t.TcpEstablishedSeconds == 0 && t.TcpFinSeconds == 0 && t.TcpCloseSeconds == 0 && t.UdpSeconds == 0 {
		s.Timeouts = nil
	}
	return nil
}

// timeoutField returns a pointer into s.Timeouts, creating it.
func timeoutField(s *raftlbv1.VirtualService, f func(*raftlbv1.Timeouts) *uint32) *uint32 {
	if s.Timeouts == nil {
		s.Timeouts = &raftlbv1.Timeouts{}
	}
	return f(s.Timeouts)
}

// millis converts a duration flag to the API's whole milliseconds.
func millis(flag string, d time.Duration) (uint32, error) {
	if d < 0 || d%time.Millisecond != 0 || d.Milliseconds() > math.MaxUint32 {
		return 0, usagef("--%s: %v is not a whole number of milliseconds between 0 and %d", flag, d, uint32(math.MaxUint32))
	}
	return uint32(d.Milliseconds()), nil
}

func newServiceCmd() *cobra.Command {
	o := &clientOpts{}
	cmd := &cobra.Command{
		Use:   "service",
		Short: "Create, change, delete and show virtual services",
		Args:  cobra.NoArgs,
	}
	addClientFlags(cmd, o, true)
	cmd.AddCommand(serviceAddCmd(o), serviceUpdateCmd(o), serviceDelCmd(o), serviceListCmd(o), serviceGetCmd(o))
	return cmd
}

func lbClient(cc grpc.ClientConnInterface) raftlbv1.LoadBalancerServiceClient {
	return raftlbv1.NewLoadBalancerServiceClient(cc)
}

func serviceAddCmd(o *clientOpts) *cobra.Command {
	var k keyFlags
	var f serviceFlags
	var owner string
	cmd := &cobra.Command{
		Use:     "add",
		Short:   "Create a virtual service",
		Example: "  raftlb service add --vip 198.51.100.10 --port 80 --proto tcp --scheduler mh --health http --health-path /",
		Args:    cobra.NoArgs,
	}
	k.add(cmd)
	f.add(cmd.Flags())
	cmd.Flags().StringVar(&owner, "owner", "", "director that should own the VIP (default: the cluster chooses)")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		key, err := k.key()
		if err != nil {
			return err
		}
		s := &raftlbv1.VirtualService{Key: key}
		if err := f.apply(cmd.Flags(), s); err != nil {
			return err
		}
		return call(cmd, o, func(ctx context.Context, cc grpc.ClientConnInterface) (*raftlbv1.CreateServiceResponse, error) {
			return lbClient(cc).CreateService(ctx, &raftlbv1.CreateServiceRequest{Service: s, PreferredOwner: owner})
		}, func(w io.Writer, r *raftlbv1.CreateServiceResponse) error { return printService(w, r.GetService()) })
	}
	return cmd
}

func serviceUpdateCmd(o *clientOpts) *cobra.Command {
	var k keyFlags
	var f serviceFlags
	cmd := &cobra.Command{
		Use:   "update",
		Short: "Change settings of a virtual service; settings not given stay as they are",
		Args:  cobra.NoArgs,
	}
	k.add(cmd)
	f.add(cmd.Flags())
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		key, err := k.key()
		if err != nil {
			return err
		}
		// Check the flags before any request is made.
		if err := f.apply(cmd.Flags(), &raftlbv1.VirtualService{}); err != nil {
			return err
		}
		return call(cmd, o, func(ctx context.Context, cc grpc.ClientConnInterface) (*raftlbv1.UpdateServiceResponse, error) {
			// The API replaces the whole definition: read it, change what was asked, write it.
			got, err := lbClient(cc).GetService(ctx, &raftlbv1.GetServiceRequest{Key: key, Consistent: true})
			if err != nil {
				return nil, err
			}
			s := got.GetService()
			s.Realservers, s.Stats = nil, nil
			if err := f.apply(cmd.Flags(), s); err != nil {
				return nil, err
			}
			return lbClient(cc).UpdateService(ctx, &raftlbv1.UpdateServiceRequest{Service: s})
		}, func(w io.Writer, r *raftlbv1.UpdateServiceResponse) error { return printService(w, r.GetService()) })
	}
	return cmd
}

func serviceDelCmd(o *clientOpts) *cobra.Command {
	var k keyFlags
	cmd := &cobra.Command{
		Use:     "del",
		Aliases: []string{"delete", "rm"},
		Short:   "Delete a virtual service and its realservers",
		Args:    cobra.NoArgs,
	}
	k.add(cmd)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		key, err := k.key()
		if err != nil {
			return err
		}
		return call(cmd, o, func(ctx context.Context, cc grpc.ClientConnInterface) (*raftlbv1.DeleteServiceResponse, error) {
			return lbClient(cc).DeleteService(ctx, &raftlbv1.DeleteServiceRequest{Key: key})
		}, func(w io.Writer, _ *raftlbv1.DeleteServiceResponse) error {
			_, err := fmt.Fprintf(w, "deleted %s\n", keyString(key))
			return err
		})
	}
	return cmd
}

func serviceListCmd(o *clientOpts) *cobra.Command {
	var consistent bool
	cmd := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List virtual services",
		Args:    cobra.NoArgs,
	}
	cmd.Flags().BoolVar(&consistent, "consistent", false, "read through the leader (linearizable) instead of locally")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		return call(cmd, o, func(ctx context.Context, cc grpc.ClientConnInterface) (*raftlbv1.ListServicesResponse, error) {
			return lbClient(cc).ListServices(ctx, &raftlbv1.ListServicesRequest{Consistent: consistent})
		}, printServices)
	}
	return cmd
}

func serviceGetCmd(o *clientOpts) *cobra.Command {
	var k keyFlags
	var consistent bool
	cmd := &cobra.Command{
		Use:   "get",
		Short: "Show one virtual service with its realservers",
		Args:  cobra.NoArgs,
	}
	k.add(cmd)
	cmd.Flags().BoolVar(&consistent, "consistent", false, "read through the leader (linearizable) instead of locally")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		key, err := k.key()
		if err != nil {
			return err
		}
		return call(cmd, o, func(ctx context.Context, cc grpc.ClientConnInterface) (*raftlbv1.GetServiceResponse, error) {
			return lbClient(cc).GetService(ctx, &raftlbv1.GetServiceRequest{Key: key, Consistent: consistent})
		}, func(w io.Writer, r *raftlbv1.GetServiceResponse) error { return printService(w, r.GetService()) })
	}
	return cmd
}

// keyString is "tcp 198.51.100.10:80".
func keyString(k *raftlbv1.ServiceKey) string {
	return protocolWords.name(k.GetProtocol()) + " " + net.JoinHostPort(k.GetVip(), strconv.FormatUint(uint64(k.GetPort()), 10))
}

func printServices(w io.Writer, r *raftlbv1.ListServicesResponse) error {
	t := newTable(w, "SERVICE", "SCHEDULER", "PERSISTENCE", "HEALTH", "FAILURE-POLICY", "REALSERVERS", "UP/DOWN", "ACTIVE", "CONNECTIONS", "PACKETS", "BYTES")
	for _, s := range r.GetServices() {
		up, down := 0, 0
		for _, rs := range s.GetRealservers() {
			switch rs.GetHealth() {
			case raftlbv1.HealthState_HEALTH_STATE_UP:
				up++
			case raftlbv1.HealthState_HEALTH_STATE_DOWN:
				down++
			}
		}
		st := s.GetStats()
		t.row(keyString(s.GetKey()), schedulerWords.name(s.GetScheduler()), seconds(s.GetPersistenceSeconds()),
			healthWords.name(s.GetHealthCheck().GetType()), failurePolicyWords.name(s.GetFailurePolicy()),
			strconv.Itoa(len(s.GetRealservers())), fmt.Sprintf("%d/%d", up, down),
			strconv.FormatUint(st.GetActiveConnections(), 10), strconv.FormatUint(st.GetConnections(), 10),
			strconv.FormatUint(st.GetPackets(), 10), strconv.FormatUint(st.GetBytes(), 10))
	}
	return t.flush()
}

// printService shows one service's settings, then its realservers.
func printService(w io.Writer, s *raftlbv1.VirtualService) error {
	hc := s.GetHealthCheck()
	health := healthWords.name(hc.GetType())
	if hc.GetType() > raftlbv1.HealthCheckType_HEALTH_CHECK_TYPE_NONE {
		var extra []string
		if hc.GetIntervalMs() != 0 {
			extra = append(extra, "every "+(time.Duration(hc.GetIntervalMs())*time.Millisecond).String())
		}
		if hc.GetTimeoutMs() != 0 {
			extra = append(extra, "timeout "+(time.Duration(hc.GetTimeoutMs())*time.Millisecond).String())
		}
		if hc.GetRise() != 0 || hc.GetFall() != 0 {
			extra = append(extra, fmt.Sprintf("rise %d fall %d", hc.GetRise(), hc.GetFall()))
		}
		if hc.GetPath() != "" {
			extra = append(extra, "path "+hc.GetPath())
		}
		if hc.GetExpectedStatus() != 0 {
			extra = append(extra, fmt.Sprintf("status %d", hc.GetExpectedStatus()))
		}
		if len(extra) > 0 {
			health += " (" + strings.Join(extra, ", ") + ")"
		}
	}
	to := s.GetTimeouts()
	t := newTable(w, "SERVICE", keyString(s.GetKey()))
	t.row("scheduler", schedulerWords.name(s.GetScheduler()))
	t.row("persistence", seconds(s.GetPersistenceSeconds()))
	t.row("timeouts", fmt.Sprintf("established %s, fin %s, close %s, udp %s",
		seconds(to.GetTcpEstablishedSeconds()), seconds(to.GetTcpFinSeconds()), seconds(to.GetTcpCloseSeconds()), seconds(to.GetUdpSeconds())))
	t.row("health check", health)
	t.row("failure policy", failurePolicyWords.name(s.GetFailurePolicy()))
	t.row("maglev table", orDash(uintOrEmpty(s.GetMaglevTableSize())))
	if err := t.flush(); err != nil {
		return err
	}
	if len(s.GetRealservers()) == 0 {
		_, err := fmt.Fprintln(w, "\nno realservers")
		return err
	}
	fmt.Fprintln(w)
	return printRealservers(w, s.GetRealservers())
}

func printRealservers(w io.Writer, rss []*raftlbv1.Realserver) error {
	t := newTable(w, "REALSERVER", "PORT", "WEIGHT", "METHOD", "ADMIN", "HEALTH", "ACTIVE", "CONNECTIONS", "PACKETS", "BYTES")
	for _, rs := range rss {
		st := rs.GetStats()
		t.row(rs.GetAddress(), orDash(uintOrEmpty(rs.GetPort())), strconv.FormatUint(uint64(rs.GetWeight()), 10),
			methodWords.name(rs.GetMethod()), adminStateWords.name(rs.GetAdminState()), healthStateWords.name(rs.GetHealth()),
			strconv.FormatUint(st.GetActiveConnections(), 10), strconv.FormatUint(st.GetConnections(), 10),
			strconv.FormatUint(st.GetPackets(), 10), strconv.FormatUint(st.GetBytes(), 10))
	}
	return t.flush()
}

// seconds prints a seconds setting, "-" for zero (off or the default).
func seconds(s uint32) string {
	if s == 0 {
		return "-"
	}
	return (time.Duration(s) * time.Second).String()
}

func uintOrEmpty(v uint32) string {
	if v == 0 {
		return ""
	}
	return strconv.FormatUint(uint64(v), 10)
}
