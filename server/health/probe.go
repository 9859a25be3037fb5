package health

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"time"
)

// maxBodyRead bounds what a probe reads of a response body: the verdict
// depends on the status alone, and a realserver must not be able to make a
// director read without end.
const maxBodyRead = 4 << 10

// maxHeaderBytes bounds the response headers a probe accepts.
const maxHeaderBytes = 64 << 10

// userAgent lets realserver logs tell probes from clients.
const userAgent = "raftlb-health/1"

// StatusError is a probe failure because the realserver answered with a
// status other than the expected one.
type StatusError struct {
	Got, Want int
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("unexpected http status %d, want %d", e.Got, e.Want)
}

// Dialer opens the connection a probe runs over. It is the seam through
// which a director proves the forwarding path of DR and TUN targets (see the
// package documentation). DialContext must return when ctx is done.
type Dialer interface {
	// DialContext connects to port of target t over network ("tcp").
	DialContext(ctx context.Context, network string, t Target, port uint16) (net.Conn, error)
}

// DirectDialer dials the realserver's own address, whatever the method. It
// proves that the realserver's service answers, not that traffic forwarded
// to the VIP reaches it.
type DirectDialer struct {
	// Dialer is used as is; its zero value is fine.
	Dialer net.Dialer
}

// DialContext dials t.Address:port.
func (d *DirectDialer) DialContext(ctx context.Context, network string, t Target, port uint16) (net.Conn, error) {
	conn, err := d.Dialer.DialContext(ctx, network, netip.AddrPortFrom(t.Address, port).String())
	if err != nil {
		return nil, fmt.Errorf("dial realserver: %w", err)
	}
	return conn, nil
}

// tracker turns a stream of probe results into state transitions.
type tracker struct {
	rise, fall int
	state      State
	passes     int // consecutive, capped at rise
	failures   int // consecutive, capped at fall
}

// observe records one probe result and reports whether the state changed.
func (t *tracker) observe(pass bool) bool {
	if pass {
		t.failures = 0
		if t.passes < t.rise {
			t.passes++
		}
		if t.state != StateUp && t.passes >= t.rise {
			t.state = StateUp
			return true
		}
		return false
	}
	t.passes = 0
	if t.failures < t.fall {
		t.failures++
	}
	if t.state != StateDown && t.failures >= t.fall {
		t.state = StateDown
		return true
	}
	return false
}

// jitter is the delay before a target's first probe: a hash of the target
// spread over one interval, so targets added together do not probe together
// and the same target always starts at the same offset.
func jitter(t Target, interval time.Duration) time.Duration {
	if interval <= 0 {
		return 0
	}
	h := fnv.New64a()
	b := t.Service.VIP.As16()
	h.Write(b[:])
	b = t.Address.As16()
	h.Write(b[:])
	h.Write([]byte{
		byte(t.Service.Port >> 8), byte(t.Service.Port), byte(t.Service.Protocol),
		byte(t.Port >> 8), byte(t.Port), byte(t.Method),
	})
	return time.Duration(h.Sum64() % uint64(interval))
}

// transition is a prober's report of a new state to the Checker's loop.
type transition struct {
	p     *prober
	state State
	err   error // the last probe's error, nil when it passed
}

// prober owns the probing of one target with one Check.
type prober struct {
	target Target
	check  Check
	port   uint16
	dialer Dialer
	log    *slog.Logger
	client *http.Client // nil for TCP checks
	url    string

	cancel context.CancelFunc
}

func newProber(t Target, c Check, d Dialer, log *slog.Logger) *prober {
	p := &prober{target: t, check: c, port: c.Port, dialer: d, log: log}
	if p.port == 0 {
		p.port = t.port()
	}
	if c.Type == CheckHTTP || c.Type == CheckHTTPS {
		scheme := "http"
		if c.Type == CheckHTTPS {
			scheme = "https"
		}
		p.url = scheme + "://" + netip.AddrPortFrom(t.Address, p.port).String() + c.Path
		p.client = newHTTPClient(t, p.port, c.Timeout, d)
	}
	return p
}

// newHTTPClient builds a client private to one prober: no proxy from the
// environment, no pooled connections (each probe must prove a fresh
// connection), every connection through the Dialer, no redirects.
func newHTTPClient(t Target, port uint16, timeout time.Duration, d Dialer) *http.Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return d.DialContext(ctx, network, t, port)
		},
		// Realservers present certificates for the service's name (the VIP's
		// DNS name), not for their own address, and are often self-signed
		// behind the balancer; the check asks "does it answer", not "is it
		// who it claims to be", so the certificate is not verified.
		TLSClientConfig:        &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // see above
		TLSHandshakeTimeout:    timeout,
		ResponseHeaderTimeout:  timeout,
		DisableKeepAlives:      true,
		DisableCompression:     true,
		MaxResponseHeaderBytes: maxHeaderBytes,
	}
	return &http.Client{
		Transport: tr,
		Timeout:   timeout,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
}

// run probes until ctx is done, sending each transition to out. It starts
// from state initial (so a changed Check does not forget the verdict) and
// waits a deterministic jitter before the first probe.
func (p *prober) run(ctx context.Context, initial State, out chan<- transition) {
	if p.client != nil {
		defer p.client.CloseIdleConnections()
	}
	tr := tracker{rise: p.check.Rise, fall: p.check.Fall, state: initial}
	timer := time.NewTimer(jitter(p.target, p.check.Interval))
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		start := time.Now()
		err := p.probe(ctx)
		if ctx.Err() != nil {
			// Stopped mid-probe: the failure is ours, not the realserver's.
			return
		}
		if err != nil {
			p.log.Debug("probe failed", targetAttrs(p.target, p.check, "err", err)...)
		}
		if tr.observe(err == nil) {
			select {
			case out <- transition{p: p, state: tr.state, err: err}:
			case <-ctx.Done():
				return
			}
		}
		timer.Reset(max(0, p.check.Interval-time.Since(start)))
	}
}

// probe runs one check within its timeout.
func (p *prober) probe(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, p.check.Timeout)
	defer cancel()
	switch p.check.Type {
	case CheckTCP:
		return p.probeTCP(ctx)
	case CheckHTTP, CheckHTTPS:
		return p.probeHTTP(ctx)
	default:
		return fmt.Errorf("probe %s: %w", p.check.Type, errors.ErrUnsupported)
	}
}

func (p *prober) probeTCP(ctx context.Context) error {
	conn, err := p.dialer.DialContext(ctx, "tcp", p.target, p.port)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	if err := conn.Close(); err != nil {
		return fmt.Errorf("close connection: %w", err)
	}
	return nil
}

func (p *prober) probeHTTP(ctx context.Context) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.url, nil)
	if err != nil {
		return fmt.Errorf("build request: %w", err)
	}
	req.Header.Set("User-Agent", userAgent)
	resp, err := p.client.Do(req)
	if err != nil {
		return fmt.Errorf("get %s: %w", p.check.Path, err)
	}
	// The verdict needs only the status. Reading a little lets a small
	// answer finish cleanly instead of ending in a reset; the cap keeps a
	// large or endless body from holding the probe.
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxBodyRead))
	_ = resp.Body.Close()
	if resp.StatusCode != p.check.ExpectedStatus {
		return &StatusError{Got: resp.StatusCode, Want: p.check.ExpectedStatus}
	}
	return nil
}
