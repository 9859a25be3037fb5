package health

import (
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	raftlbv1 "github.com/raftlb/raftlb/proto/raftlb/v1"
	"google.golang.org/protobuf/testing/protocmp"
)

func TestTrackerObserve(t *testing.T) {
	tests := []struct {
		name       string
		rise, fall int
		initial    State
		results    []bool
		want       []State // state after each result
		changes    []int   // indexes of results that changed the state
	}{
		{
			name: "unknown to up after rise", rise: 2, fall: 3,
			results: []bool{true, true, true},
			want:    []State{StateUnknown, StateUp, StateUp},
			changes: []int{1},
		},
		{
			name: "unknown to down after fall", rise: 2, fall: 3,
			results: []bool{false, false, false, false},
			want:    []State{StateUnknown, StateUnknown, StateDown, StateDown},
			changes: []int{2},
		},
		{
			name: "interrupted runs do not count", rise: 2, fall: 2,
			results: []bool{true, false, true, false, false, true, true},
			want:    []State{StateUnknown, StateUnknown, StateUnknown, StateUnknown, StateDown, StateDown, StateUp},
			changes: []int{4, 6},
		},
		{
			name: "up stays up through fewer than fall failures", rise: 1, fall: 3, initial: StateUp,
			results: []bool{false, false, true, false, false, false},
			want:    []State{StateUp, StateUp, StateUp, StateUp, StateUp, StateDown},
			changes: []int{5},
		},
		{
			name: "rise and fall of one flip at once", rise: 1, fall: 1,
			results: []bool{true, false, true},
			want:    []State{StateUp, StateDown, StateUp},
			changes: []int{0, 1, 2},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr := tracker{rise: tt.rise, fall: tt.fall, state: tt.initial}
			var got []State
			var changes []int
			for i, r := range tt.results {
				if tr.observe(r) {
					changes = append(changes, i)
				}
				got = append(got, tr.state)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("states (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.changes, changes); diff != "" {
				t.Errorf("changes (-want +got):\n%s", diff)
			}
		})
	}
}

func TestCheckValidate(t *testing.T) {
	tests := []struct {
		name    string
		check   Check
		wantErr bool
	}{
		{name: "zero is none with defaults", check: Check{}},
		{name: "http with query", check: Check{Type: CheckHTTP, Path: "/healthz?deep=1"}},
		{name: "unknown type", check: Check{Type: CheckHTTPS + 1}, wantErr: true},
		{name: "relative path", check: Check{Type: CheckHTTP, Path: "healthz"}, wantErr: true},
		{name: "path with space", check: Check{Type: CheckHTTP, Path: "/a b"}, wantErr: true},
		{name: "status too low", check: Check{Type: CheckHTTP, ExpectedStatus: 99}, wantErr: true},
		{name: "status too high", check: Check{Type: CheckHTTP, ExpectedStatus: 600}, wantErr: true},
		{name: "negative interval", check: Check{Type: CheckTCP, Interval: -time.Second}, wantErr: true},
		{name: "negative timeout", check: Check{Type: CheckTCP, Timeout: -time.Second}, wantErr: true},
		{name: "negative rise", check: Check{Type: CheckTCP, Rise: -1}, wantErr: true},
		{name: "negative fall", check: Check{Type: CheckTCP, Fall: -1}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.check.Validate()
			if (err != nil) != tt.wantErr {
				t.Fatalf("Validate() = %v, want error %t", err, tt.wantErr)
			}
			if err != nil && !errors.Is(err, ErrInvalidCheck) {
				t.Errorf("Validate() = %v, want it to wrap ErrInvalidCheck", err)
			}
		})
	}
}

func TestFromProto(t *testing.T) {
	defaults := Check{
		Interval: 2 * time.Second, Timeout: time.Second, Rise: 2, Fall: 3,
		Path: "/", ExpectedStatus: 200,
	}
	tests := []struct {
		name    string
		in      *raftlbv1.HealthCheck
		want    Check
		wantErr bool
	}{
		{name: "nil is none", in: nil, want: defaults},
		{name: "unspecified is none", in: &raftlbv1.HealthCheck{}, want: defaults},
		{
			name: "tcp with defaults",
			in:   &raftlbv1.HealthCheck{Type: raftlbv1.HealthCheckType_HEALTH_CHECK_TYPE_TCP},
			want: func() Check { c := defaults; c.Type = CheckTCP; return c }(),
		},
		{
			name: "https with everything set",
			in: &raftlbv1.HealthCheck{
				Type: raftlbv1.HealthCheckType_HEALTH_CHECK_TYPE_HTTPS, IntervalMs: 500, TimeoutMs: 250,
				Rise: 1, Fall: 5, Path: "/healthz", ExpectedStatus: 204, Port: 8443,
			},
			want: Check{
				Type: CheckHTTPS, Interval: 500 * time.Millisecond, Timeout: 250 * time.Millisecond,
				Rise: 1, Fall: 5, Path: "/healthz", ExpectedStatus: 204, Port: 8443,
			},
		},
		{name: "unknown type", in: &raftlbv1.HealthCheck{Type: 99}, wantErr: true},
		{name: "port too big", in: &raftlbv1.HealthCheck{Type: raftlbv1.HealthCheckType_HEALTH_CHECK_TYPE_TCP, Port: 70000}, wantErr: true},
		{name: "bad path", in: &raftlbv1.HealthCheck{Type: raftlbv1.HealthCheckType_HEALTH_CHECK_TYPE_HTTP, Path: "x"}, wantErr: true},
		{name: "bad status", in: &raftlbv1.HealthCheck{Type: raftlbv1.HealthCheckType_HEALTH_CHECK_TYPE_HTTP, ExpectedStatus: 42}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := FromProto(tt.in)
			if (err != nil) != tt.wantErr {
				t.Fatalf("FromProto() error = %v, want error %t", err, tt.wantErr)
			}
			if err != nil {
				if !errors.Is(err, ErrInvalidCheck) {
					t.Errorf("FromProto() = %v, want it to wrap ErrInvalidCheck", err)
				}
				return
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("FromProto() (-want +got):\n%s", diff)
			}
		})
	}
}

func TestTargetFromProto(t *testing.T) {
	key := &raftlbv1.ServiceKey{Vip: "198.51.100.10", Port: 80, Protocol: raftlbv1.Protocol_PROTOCOL_TCP}
	tests := []struct {
		name    string
		key     *raftlbv1.ServiceKey
		rs      *raftlbv1.Realserver
		want    Target
		wantErr bool
	}{
		{
			name: "dr with service port",
			key:  key,
			rs:   &raftlbv1.Realserver{Address: "192.0.2.11", Method: raftlbv1.ForwardingMethod_FORWARDING_METHOD_DR},
			want: Target{
				Service: ServiceKey{VIP: netip.MustParseAddr("198.51.100.10"), Port: 80, Protocol: ProtocolTCP},
				Address: netip.MustParseAddr("192.0.2.11"), Method: MethodDR,
			},
		},
		{
			name: "nat with own port",
			key:  key,
			rs:   &raftlbv1.Realserver{Address: "203.0.113.11", Port: 8080, Method: raftlbv1.ForwardingMethod_FORWARDING_METHOD_NAT},
			want: Target{
				Service: ServiceKey{VIP: netip.MustParseAddr("198.51.100.10"), Port: 80, Protocol: ProtocolTCP},
				Address: netip.MustParseAddr("203.0.113.11"), Port: 8080, Method: MethodNAT,
			},
		},
		{name: "missing key", rs: &raftlbv1.Realserver{Address: "192.0.2.11"}, wantErr: true},
		{name: "missing realserver", key: key, wantErr: true},
		{name: "bad vip", key: &raftlbv1.ServiceKey{Vip: "nope", Port: 80, Protocol: raftlbv1.Protocol_PROTOCOL_TCP}, rs: &raftlbv1.Realserver{}, wantErr: true},
		{name: "no protocol", key: &raftlbv1.ServiceKey{Vip: "198.51.100.10", Port: 80}, rs: &raftlbv1.Realserver{}, wantErr: true},
		{name: "bad address", key: key, rs: &raftlbv1.Realserver{Address: "x", Method: raftlbv1.ForwardingMethod_FORWARDING_METHOD_DR}, wantErr: true},
		{name: "no method", key: key, rs: &raftlbv1.Realserver{Address: "192.0.2.11"}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := TargetFromProto(tt.key, tt.rs)
			if (err != nil) != tt.wantErr {
				t.Fatalf("TargetFromProto() error = %v, want error %t", err, tt.wantErr)
			}
			if err != nil {
				if !errors.Is(err, ErrInvalidTarget) {
					t.Errorf("TargetFromProto() = %v, want it to wrap ErrInvalidTarget", err)
				}
				return
			}
			if got != tt.want {
				t.Errorf("TargetFromProto() = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestVerdictRoundTrip(t *testing.T) {
	key := &raftlbv1.ServiceKey{Vip: "198.51.100.10", Port: 80, Protocol: raftlbv1.Protocol_PROTOCOL_UDP}
	rs := &raftlbv1.Realserver{Address: "192.0.2.12", Method: raftlbv1.ForwardingMethod_FORWARDING_METHOD_TUN}
	tgt, err := TargetFromProto(key, rs)
	if err != nil {
		t.Fatalf("TargetFromProto: %v", err)
	}
	want := &raftlbv1.HealthVerdict{
		Service: key, Address: "192.0.2.12", Port: 0, State: raftlbv1.HealthState_HEALTH_STATE_DOWN,
	}
	if diff := cmp.Diff(want, Verdict(tgt, StateDown), protocmp.Transform()); diff != "" {
		t.Errorf("Verdict (-want +got):\n%s", diff)
	}
	for _, s := range []State{StateUnknown, StateUp, StateDown} {
		if got := StateFromProto(s.ToProto()); got != s {
			t.Errorf("StateFromProto(%v.ToProto()) = %v", s, got)
		}
	}
}

func TestJitter(t *testing.T) {
	const interval = 2 * time.Second
	seen := make(map[time.Duration]bool)
	for i := range 16 {
		tgt := Target{
			Service: ServiceKey{VIP: netip.MustParseAddr("198.51.100.10"), Port: 80, Protocol: ProtocolTCP},
			Address: netip.AddrFrom4([4]byte{192, 0, 2, byte(10 + i)}),
			Method:  MethodDR,
		}
		j := jitter(tgt, interval)
		if j < 0 || j >= interval {
			t.Errorf("jitter(%v) = %v, want in [0, %v)", tgt, j, interval)
		}
		if again := jitter(tgt, interval); again != j {
			t.Errorf("jitter(%v) = %v then %v, want deterministic", tgt, j, again)
		}
		seen[j] = true
	}
	if len(seen) < 8 {
		t.Errorf("16 targets got only %d distinct jitters, want them spread", len(seen))
	}
}
