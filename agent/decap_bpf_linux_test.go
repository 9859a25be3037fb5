package agent

import (
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"

	"github.com/raftlb/raftlb/dataplane"
)

// TestReconcileRealKernelBPFDecap runs the TUN path with the real BPF
// decapsulation in a namespace: where the kernel refuses ipip, the program
// sits on the facing interface; removing the TUN VIP takes it off again and
// the namespace is as before.
func TestReconcileRealKernelBPFDecap(t *testing.T) {
	k := newTestNS(t)
	if err := k.AddIPIPTunnel(DefaultTunnelName); err == nil {
		t.Skip("this kernel has ipip: the BPF fallback is not used")
	}
	before := snapshotKernel(t, k)
	dir := t.TempDir()
	installed := func() bool {
		var ok bool
		if err := inNamespace(t, k.ns, func() (err error) {
			ok, err = dataplane.DecapInstalled("eth0")
			return err
		}); err != nil {
			t.Fatalf("DecapInstalled: %v", err)
		}
		return ok
	}
	// The decapper works in the calling thread's namespace: run passes there.
	reconcileIn := func(r *reconciler, d Desired) Status {
		var st Status
		inNamespace(t, k.ns, func() error { st = r.reconcile(d); return nil })
		return st
	}
	r := newTestReconciler(t, k, BPFDecapper{}, dir)
	d := Desired{Generation: 1, VIPs: []VIP{{vipTUN, MethodTUN}}, TunnelSources: []netip.Addr{dir1}}
	st := reconcileIn(r, d)
	if st.Err != nil || st.DecapMode != DecapModeBPF {
		t.Fatalf("reconcile: mode %q, err %v; want bpf, nil", st.DecapMode, st.Err)
	}
	if !installed() {
		t.Fatal("decap program not on eth0")
	}
	// Drift: someone removes the filter; the next pass puts it back.
	if err := inNamespace(t, k.ns, func() error { return dataplane.RemoveDecap("eth0", false) }); err != nil {
		t.Fatalf("RemoveDecap: %v", err)
	}
	if st := reconcileIn(r, d); st.Err != nil {
		t.Fatalf("reconcile after drift: %v", st.Err)
	}
	if !installed() {
		t.Fatal("decap program not restored on eth0")
	}
	// A restarted agent knows from its record that the clsact qdisc is its own.
	r = newTestReconciler(t, k, BPFDecapper{}, dir)
	if st := reconcileIn(r, Desired{Generation: 2}); st.Err != nil {
		t.Fatalf("reconcile empty: %v", st.Err)
	}
	if installed() {
		t.Error("decap program still on eth0")
	}
	if diff := cmp.Diff(before, snapshotKernel(t, k), viewOpts); diff != "" {
		t.Errorf("kernel (-before +after):\n%s", diff)
	}
}

// TestBPFDecapKeepsForeignClsact: a clsact qdisc that was on the interface
// before the agent attached its filter is someone else's and stays when the
// filter goes.
func TestBPFDecapKeepsForeignClsact(t *testing.T) {
	k := newTestNS(t)
	if err := k.AddIPIPTunnel(DefaultTunnelName); err == nil {
		t.Skip("this kernel has ipip: the BPF fallback is not used")
	}
	eth0, err := k.h.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	clsact := &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{LinkIndex: eth0.Attrs().Index, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT},
		QdiscType:  "clsact",
	}
	if err := k.h.QdiscAdd(clsact); err != nil {
		t.Fatalf("add clsact: %v", err)
	}
	before := snapshotKernel(t, k)
	r := newTestReconciler(t, k, BPFDecapper{}, t.TempDir())
	var st Status
	inNamespace(t, k.ns, func() error {
		st = r.reconcile(Desired{Generation: 1, VIPs: []VIP{{vipTUN, MethodTUN}}})
		return nil
	})
	if st.Err != nil || st.DecapMode != DecapModeBPF {
		t.Fatalf("reconcile: mode %q, err %v; want bpf, nil", st.DecapMode, st.Err)
	}
	inNamespace(t, k.ns, func() error {
		st = r.reconcile(Desired{Generation: 2})
		return nil
	})
	if st.Err != nil {
		t.Fatalf("reconcile empty: %v", st.Err)
	}
	if diff := cmp.Diff(before, snapshotKernel(t, k), viewOpts); diff != "" {
		t.Errorf("kernel (-before +after):\n%s", diff)
	}
}
