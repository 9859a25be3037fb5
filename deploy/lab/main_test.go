package lab

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"testing"
)

// TestMain lets the test binary stand in for the raftlb binary inside the lab:
// `<test> lab backend --name rs1` runs the real backend, and `<test> director …` a fake
// director that prints its flags and listens on --api-addr, `<test> agent …` a fake
// agent that prints its flags, so Up can be tested without building cmd/raftlb.
// `<test> stubborn` ignores SIGTERM.
func TestMain(m *testing.M) {
	switch {
	case len(os.Args) > 2 && os.Args[1] == "lab" && os.Args[2] == "backend":
		os.Exit(fakeBackendMain(os.Args[3:]))
	case len(os.Args) > 1 && os.Args[1] == "director":
		os.Exit(fakeDirectorMain(os.Args[2:]))
	case len(os.Args) > 1 && os.Args[1] == "agent":
		os.Exit(fakeAgentMain(os.Args[2:]))
	case len(os.Args) > 1 && os.Args[1] == "stubborn":
		os.Exit(stubbornMain())
	}
	os.Exit(m.Run())
}

func fakeBackendMain(args []string) int {
	fs := flag.NewFlagSet("backend", flag.ContinueOnError)
	name := fs.String("name", "", "backend name")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := RunBackend(ctx, *name); err != nil {
		fmt.Fprintln(os.Stderr, "backend:", err)
		return 1
	}
	return 0
}

// stubbornMain ignores SIGTERM and listens on stubbornPort, so Down has to escalate.
func stubbornMain() int {
	signal.Ignore(syscall.SIGTERM)
	ln, err := net.Listen("tcp4", fmt.Sprintf("0.0.0.0:%d", stubbornPort))
	if err != nil {
		fmt.Fprintln(os.Stderr, "stubborn:", err)
		return 1
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			return 1
		}
		c.Close()
	}
}

const stubbornPort = 9

func fakeDirectorMain(args []string) int {
	fmt.Println("args:", strings.Join(args, " "))
	var api string
	for i, a := range args {
		if a == "--api-addr" && i+1 < len(args) {
			api = args[i+1]
		}
	}
	ln, err := net.Listen("tcp4", api)
	if err != nil {
		fmt.Fprintln(os.Stderr, "fake director:", err)
		return 1
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	<-ctx.Done()
	return 0
}

// fakeAgentMain prints its flags and waits for a signal.
func fakeAgentMain(args []string) int {
	fmt.Println("args:", strings.Join(args, " "))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	<-ctx.Done()
	return 0
}
