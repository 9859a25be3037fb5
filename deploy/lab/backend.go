package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"golang.org/x/net/ipv4"
)

// BackendConfig says what the lab backend serves and where. The zero ports mean the
// defaults, BackendHTTPPort and BackendEchoPort.
type BackendConfig struct {
	// Name is what GET / answers, e.g. "rs1".
	Name string
	// HTTPPort serves HTTP: every path answers Name and a newline.
	HTTPPort int
	// EchoPort serves TCP and UDP echo (RFC 862).
	EchoPort int
	// Ready, if set, is called once every socket is bound.
	Ready func()
}

// RunBackend serves the lab backend for name on the default ports until ctx is done.
func RunBackend(ctx context.Context, name string) error {
	return ServeBackend(ctx, BackendConfig{Name: name})
}

// ServeBackend runs the lab backend until ctx is done. It binds 0.0.0.0, so it answers
// on every local address, VIPs on lo included; UDP replies leave from the address the
// request was sent to, as a DR or TUN realserver must answer from the VIP.
func ServeBackend(ctx context.Context, cfg BackendConfig) error {
	if cfg.Name == "" {
		return errors.New("serve backend: empty name")
	}
	if cfg.HTTPPort == 0 {
		cfg.HTTPPort = BackendHTTPPort
	}
	if cfg.EchoPort == 0 {
		cfg.EchoPort = BackendEchoPort
	}
	var lc net.ListenConfig
	httpLn, err := lc.Listen(ctx, "tcp4", net.JoinHostPort("0.0.0.0", strconv.Itoa(cfg.HTTPPort)))
	if err != nil {
		return fmt.Errorf("listen http: %w", err)
	}
	defer httpLn.Close()
	echoLn, err := lc.Listen(ctx, "tcp4", net.JoinHostPort("0.0.0.0", strconv.Itoa(cfg.EchoPort)))
	if err != nil {
		return fmt.Errorf("listen tcp echo: %w", err)
	}
	defer echoLn.Close()
	udp, err := lc.ListenPacket(ctx, "udp4", net.JoinHostPort("0.0.0.0", strconv.Itoa(cfg.EchoPort)))
	if err != nil {
		return fmt.Errorf("listen udp echo: %w", err)
	}
	defer udp.Close()
	if cfg.Ready != nil {
		cfg.Ready()
	}

	body := []byte(cfg.Name + "\n")
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			w.Header().Set("Content-Length", strconv.Itoa(len(body)))
			_, _ = w.Write(body)
		}),
		ReadHeaderTimeout: 10 * time.Second,
	}

	var wg sync.WaitGroup
	errc := make(chan error, 3)
	wg.Go(func() {
		if err := srv.Serve(httpLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errc <- fmt.Errorf("serve http: %w", err)
		}
	})
	wg.Go(func() { errc <- serveTCPEcho(ctx, echoLn) })
	wg.Go(func() { errc <- serveUDPEcho(ctx, udp) })

	var first error
	select {
	case <-ctx.Done():
	case first = <-errc:
	}
	shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
	defer cancel()
	_ = srv.Shutdown(shutdownCtx)
	_ = srv.Close()
	echoLn.Close()
	udp.Close()
	wg.Wait()
	return first
}

// serveTCPEcho echoes every connection until ctx is done, then closes them all.
func serveTCPEcho(ctx context.Context, ln net.Listener) error {
	var mu sync.Mutex
	conns := make(map[net.Conn]struct{})
	var wg sync.WaitGroup
	defer func() {
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	}()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("accept echo: %w", err)
		}
		mu.Lock()
		conns[c] = struct{}{}
		mu.Unlock()
		wg.Go(func() {
			_, _ = io.Copy(c, c)
			c.Close()
			mu.Lock()
			delete(conns, c)
			mu.Unlock()
		})
	}
}

// serveUDPEcho echoes datagrams from the address they were sent to.
func serveUDPEcho(ctx context.Context, c net.PacketConn) error {
	pc := ipv4.NewPacketConn(c)
	if err := pc.SetControlMessage(ipv4.FlagDst, true); err != nil {
		return fmt.Errorf("enable udp pktinfo: %w", err)
	}
	buf := make([]byte, 65536)
	for {
		n, cm, from, err := pc.ReadFrom(buf)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("read udp echo: %w", err)
		}
		var reply *ipv4.ControlMessage
		if cm != nil && cm.Dst != nil {
			reply = &ipv4.ControlMessage{Src: cm.Dst}
		}
		// A failed reply is the client's problem (gone, unreachable), not the server's.
		_, _ = pc.WriteTo(buf[:n], reply, from)
	}
}
