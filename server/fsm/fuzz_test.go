package fsm

import (
	"errors"
	"testing"

	"google.golang.org/protobuf/proto"

	raftlbv1 "github.com/raftlb/raftlb/proto/raftlb/v1"
)

// FuzzApply feeds arbitrary bytes to Apply: it must never panic, must always
// return a result, and a rejected command must leave the state alone.
func FuzzApply(f *testing.F) {
	for _, c := range buildLog() {
		b, err := proto.Marshal(c)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{})
	f.Add([]byte{0xaa, 0x06, 0x00})
	f.Fuzz(func(t *testing.T, data []byte) {
		n := newNode(t)
		applyLog(t, n, buildLog()[:10])
		before := snapshotBytes(t, n.FSM)
		gen := n.Generation()
		res := n.applyBytes(t, data)
		if ResultError(res) != nil {
			if n.Generation() != gen || string(before) != string(snapshotBytes(t, n.FSM)) {
				t.Fatalf("rejected command (%v) changed the state", ResultError(res))
			}
		}
		cmd := new(raftlbv1.Command)
		if proto.Unmarshal(data, cmd) == nil {
			if err := ValidateCommand(cmd); err != nil && !errors.As(err, new(*Error)) {
				t.Fatalf("ValidateCommand returned %T", err)
			}
		}
		// Whatever happened, the state must still snapshot and restore.
		g := newNode(t)
		restore(t, g.FSM, snapshotBytes(t, n.FSM))
		_, _ = g.AgentConfig("rs1")
	})
}
