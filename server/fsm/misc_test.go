package fsm

import (
	"bytes"
	"io"

	"google.golang.org/protobuf/proto"

	raftlbv1 "github.com/raftlb/raftlb/proto/raftlb/v1"
)

func nopCloser(b []byte) io.ReadCloser { return io.NopCloser(bytes.NewReader(b)) }

func protoMarshal(m proto.Message) ([]byte, error) { return proto.Marshal(m) }

type rawCommand = raftlbv1.Command
