package health

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// fast is a check quick enough for tests: a verdict within a few tens of ms.
var fast = Check{Interval: 20 * time.Millisecond, Timeout: 200 * time.Millisecond, Rise: 2, Fall: 2}

func withType(c Check, typ CheckType) Check {
	c.Type = typ
	return c
}

// equateAddrs lets cmp compare values holding netip.Addr, whose fields are
// unexported.
var equateAddrs = cmp.Comparer(func(a, b netip.Addr) bool { return a == b })

var testService = ServiceKey{VIP: netip.MustParseAddr("198.51.100.10"), Port: 80, Protocol: ProtocolTCP}

// targetAt is a target whose realserver is at addr (host:port).
func targetAt(t *testing.T, addr string) Target {
	t.Helper()
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		t.Fatalf("parse %q: %v", addr, err)
	}
	return Target{Service: testService, Address: ap.Addr(), Port: ap.Port(), Method: MethodNAT}
}

type change struct {
	Target Target
	State  State
}

// recorder collects OnChange calls.
type recorder struct {
	mu      sync.Mutex
	changes []change
}

func (r *recorder) onChange(t Target, s State) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.changes = append(r.changes, change{t, s})
}

func (r *recorder) of(t Target) []State {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []State
	for _, c := range r.changes {
		if c.Target == t {
			out = append(out, c.State)
		}
	}
	return out
}

func (r *recorder) all() []change {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]change(nil), r.changes...)
}

// waitFor polls cond until it holds or a deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		<-tick.C
	}
}

func waitState(t *testing.T, c *Checker, tgt Target, want State) {
	t.Helper()
	waitFor(t, fmt.Sprintf("%v to be %v", tgt, want), func() bool {
		s, ok := c.States()[tgt]
		return ok && s == want
	})
}

// start runs a Checker until the test ends and checks that Run returns nil.
func start(t *testing.T, opts Options) (*Checker, *recorder) {
	t.Helper()
	rec := &recorder{}
	opts.OnChange = rec.onChange
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	c := New(opts)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run() = %v, want nil", err)
			}
		case <-time.After(5 * time.Second):
			t.Errorf("Run did not return after cancel")
		}
	})
	return c, rec
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// tcpServer accepts and closes connections on a fixed address, and can be
// stopped and started again on the same address.
type tcpServer struct {
	addr string
	ln   net.Listener
	wg   sync.WaitGroup
}

func newTCPServer(t *testing.T) *tcpServer {
	t.Helper()
	s := &tcpServer{addr: "127.0.0.1:0"}
	s.start(t)
	s.addr = s.ln.Addr().String()
	t.Cleanup(s.stop)
	return s
}

func (s *tcpServer) start(t *testing.T) {
	t.Helper()
	ln, err := net.Listen("tcp", s.addr)
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	s.ln = ln
	s.wg.Go(func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			_ = conn.Close()
		}
	})
}

func (s *tcpServer) stop() {
	if s.ln != nil {
		_ = s.ln.Close()
		s.wg.Wait()
		s.ln = nil
	}
}

// httpServer is an httptest server whose answer can be changed and which
// can be stopped and started again on the same address.
type httpServer struct {
	tls    bool
	status atomic.Int32
	hang   atomic.Bool
	host   atomic.Value // Host header of the last request
	hits   atomic.Int64
	path   string
	addr   string
	srv    *httptest.Server
}

func newHTTPServer(t *testing.T, useTLS bool, path string, status int) *httpServer {
	t.Helper()
	s := &httpServer{tls: useTLS, path: path}
	s.status.Store(int32(status))
	s.start(t)
	s.addr = s.srv.Listener.Addr().String()
	t.Cleanup(s.stop)
	return s
}

func (s *httpServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.hits.Add(1)
	s.host.Store(r.Host)
	if s.hang.Load() {
		<-r.Context().Done()
		return
	}
	if r.URL.Path != s.path {
		http.NotFound(w, r)
		return
	}
	w.WriteHeader(int(s.status.Load()))
	_, _ = w.Write([]byte("rs1\n"))
}

func (s *httpServer) start(t *testing.T) {
	t.Helper()
	srv := httptest.NewUnstartedServer(s)
	if s.addr != "" {
		ln, err := net.Listen("tcp", s.addr)
		if err != nil {
			t.Fatalf("listen: %v", err)
		}
		_ = srv.Listener.Close()
		srv.Listener = ln
	}
	if s.tls {
		srv.StartTLS()
	} else {
		srv.Start()
	}
	s.srv = srv
}

func (s *httpServer) stop() {
	if s.srv != nil {
		s.srv.Close()
		s.srv = nil
	}
}

func TestCheckerUpDownUp(t *testing.T) {
	// Each case brings a realserver up, breaks it, and repairs it; the
	// checker must report exactly up, down, up.
	type server struct {
		addr          string
		breaks, fixes func(t *testing.T)
	}
	httpCase := func(useTLS bool, path string, status int, brk, fix func(*httpServer, *testing.T)) func(t *testing.T) server {
		return func(t *testing.T) server {
			s := newHTTPServer(t, useTLS, path, status)
			return server{
				addr:   s.addr,
				breaks: func(t *testing.T) { brk(s, t) },
				fixes:  func(t *testing.T) { fix(s, t) },
			}
		}
	}
	stopHTTP := func(s *httpServer, _ *testing.T) { s.stop() }
	startHTTP := func(s *httpServer, t *testing.T) { s.start(t) }
	setStatus := func(code int) func(*httpServer, *testing.T) {
		return func(s *httpServer, _ *testing.T) { s.status.Store(int32(code)) }
	}
	tests := []struct {
		name  string
		check Check
		setup func(t *testing.T) server
	}{
		{
			name:  "tcp listener closed",
			check: withType(fast, CheckTCP),
			setup: func(t *testing.T) server {
				s := newTCPServer(t)
				return server{
					addr:   s.addr,
					breaks: func(*testing.T) { s.stop() },
					fixes:  func(t *testing.T) { s.start(t) },
				}
			},
		},
		{
			name:  "http wrong status",
			check: withType(fast, CheckHTTP),
			setup: httpCase(false, "/", 200, setStatus(503), setStatus(200)),
		},
		{
			name:  "http server stopped",
			check: withType(fast, CheckHTTP),
			setup: httpCase(false, "/", 200, stopHTTP, startHTTP),
		},
		{
			name: "http custom path and status",
			check: func() Check {
				c := withType(fast, CheckHTTP)
				c.Path, c.ExpectedStatus = "/healthz", http.StatusNoContent
				return c
			}(),
			// 200 is a failure when 204 is expected.
			setup: httpCase(false, "/healthz", 204, setStatus(200), setStatus(204)),
		},
		{
			name:  "http redirect is not followed",
			check: withType(fast, CheckHTTP),
			setup: httpCase(false, "/", 200, setStatus(http.StatusFound), setStatus(200)),
		},
		{
			name: "http hangs past the timeout",
			check: func() Check {
				c := withType(fast, CheckHTTP)
				c.Timeout = 50 * time.Millisecond
				return c
			}(),
			setup: httpCase(false, "/", 200,
				func(s *httpServer, _ *testing.T) { s.hang.Store(true) },
				func(s *httpServer, _ *testing.T) { s.hang.Store(false) }),
		},
		{
			name:  "https self-signed wrong status",
			check: withType(fast, CheckHTTPS),
			setup: httpCase(true, "/", 200, setStatus(500), setStatus(200)),
		},
		{
			name:  "https server stopped",
			check: withType(fast, CheckHTTPS),
			setup: httpCase(true, "/", 200, stopHTTP, startHTTP),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := tt.setup(t)
			c, rec := start(t, Options{})
			tgt := targetAt(t, srv.addr)
			c.Update(map[Target]Check{tgt: tt.check})

			waitState(t, c, tgt, StateUp)
			srv.breaks(t)
			waitState(t, c, tgt, StateDown)
			srv.fixes(t)
			waitState(t, c, tgt, StateUp)

			// States changes just before OnChange is called.
			waitFor(t, "three OnChange calls", func() bool { return len(rec.of(tgt)) >= 3 })
			if diff := cmp.Diff([]State{StateUp, StateDown, StateUp}, rec.of(tgt)); diff != "" {
				t.Errorf("OnChange states (-want +got):\n%s", diff)
			}
		})
	}
}

func TestCheckerUnknownToDown(t *testing.T) {
	// A listener that is closed at once gives a free port nobody answers on.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()

	c, rec := start(t, Options{})
	tgt := targetAt(t, addr)
	c.Update(map[Target]Check{tgt: withType(fast, CheckTCP)})
	waitFor(t, "OnChange", func() bool { return len(rec.of(tgt)) > 0 })
	if diff := cmp.Diff([]State{StateDown}, rec.of(tgt)); diff != "" {
		t.Errorf("OnChange states (-want +got):\n%s", diff)
	}
}

// fakeDialer records every dial and answers from a script (true passes)
// and then with pass, over in-memory pipes: no sockets, no goroutines.
type fakeDialer struct {
	mu     sync.Mutex
	calls  []dial
	script map[Target][]bool
	down   map[Target]bool // fail every dial while set
}

type dial struct {
	Network string
	Target  Target
	Port    uint16
}

func (d *fakeDialer) DialContext(ctx context.Context, network string, t Target, port uint16) (net.Conn, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	d.mu.Lock()
	d.calls = append(d.calls, dial{network, t, port})
	pass := !d.down[t]
	if s := d.script[t]; len(s) > 0 {
		pass, d.script[t] = s[0], s[1:]
	}
	d.mu.Unlock()
	if !pass {
		return nil, errors.New("scripted failure")
	}
	a, b := net.Pipe()
	_ = b.Close()
	return a, nil
}

// count is the number of dials matching f.
func (d *fakeDialer) count(f func(dial) bool) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := 0
	for _, c := range d.calls {
		if f(c) {
			n++
		}
	}
	return n
}

func (d *fakeDialer) setDown(t Target, down bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.down == nil {
		d.down = make(map[Target]bool)
	}
	d.down[t] = down
}

func to(tgt Target) func(dial) bool { return func(d dial) bool { return d.Target == tgt } }

func TestCheckerOnChangeOnlyOnTransitions(t *testing.T) {
	tgt := targetAt(t, "192.0.2.11:80")
	script := []bool{
		true, false, true, true, // rise 2 reached on the 4th: up
		false, true, false, false, // fall 2 reached on the 8th: down
		false, true, true, // up again
	}
	d := &fakeDialer{script: map[Target][]bool{tgt: script}}
	c, rec := start(t, Options{Dialer: d})
	c.Update(map[Target]Check{tgt: withType(fast, CheckTCP)})

	// Many passes after the script: none of them may report anything.
	waitFor(t, "the script's transitions", func() bool { return len(rec.of(tgt)) >= 3 })
	waitFor(t, "the script and 10 more probes", func() bool { return d.count(to(tgt)) >= len(script)+10 })
	if diff := cmp.Diff([]State{StateUp, StateDown, StateUp}, rec.of(tgt)); diff != "" {
		t.Errorf("OnChange states (-want +got):\n%s", diff)
	}
}

func TestCheckerNone(t *testing.T) {
	d := &fakeDialer{}
	c, rec := start(t, Options{Dialer: d})
	none := targetAt(t, "192.0.2.11:80")
	tcp := targetAt(t, "192.0.2.12:80")

	c.Update(map[Target]Check{none: {}})
	waitState(t, c, none, StateUp)
	// The same set again, then a probed target as a marker: once the marker
	// is up, the second update has been handled too.
	c.Update(map[Target]Check{none: {}})
	c.Update(map[Target]Check{none: {}, tcp: withType(fast, CheckTCP)})
	waitState(t, c, tcp, StateUp)
	waitFor(t, "OnChange for the marker", func() bool { return len(rec.of(tcp)) > 0 })

	want := []change{{none, StateUp}, {tcp, StateUp}}
	if diff := cmp.Diff(want, rec.all(), equateAddrs); diff != "" {
		t.Errorf("OnChange (-want +got):\n%s", diff)
	}
	if n := d.count(to(none)); n != 0 {
		t.Errorf("target with CheckNone was dialled %d times, want 0", n)
	}
}

func TestCheckerInvalidCheckStaysUnknown(t *testing.T) {
	d := &fakeDialer{}
	c, rec := start(t, Options{Dialer: d})
	bad := targetAt(t, "192.0.2.11:80")
	marker := targetAt(t, "192.0.2.12:80")
	badCheck := withType(fast, CheckHTTP)
	badCheck.Path = "no-slash"

	c.Update(map[Target]Check{bad: badCheck, marker: withType(fast, CheckTCP)})
	waitState(t, c, marker, StateUp)
	if s, ok := c.States()[bad]; !ok || s != StateUnknown {
		t.Errorf("States()[bad] = %v, %t; want unknown, true", s, ok)
	}
	if n := d.count(to(bad)); n != 0 {
		t.Errorf("target with an invalid check was dialled %d times, want 0", n)
	}
	if got := rec.of(bad); len(got) != 0 {
		t.Errorf("OnChange for the invalid target: %v, want none", got)
	}
}

func TestCheckerCustomDialerHTTP(t *testing.T) {
	srv := newHTTPServer(t, false, "/", 200)
	var mu sync.Mutex
	var got []dial
	d := dialerFunc(func(ctx context.Context, network string, tgt Target, port uint16) (net.Conn, error) {
		mu.Lock()
		got = append(got, dial{network, tgt, port})
		mu.Unlock()
		var nd net.Dialer
		return nd.DialContext(ctx, network, srv.addr)
	})
	c, _ := start(t, Options{Dialer: d})

	// A DR target on an address nothing answers on: only the dialer can reach
	// the server, and the check's own port overrides the realserver's.
	tgt := Target{Service: testService, Address: netip.MustParseAddr("192.0.2.11"), Method: MethodDR}
	chk := withType(fast, CheckHTTP)
	chk.Port = 8080
	c.Update(map[Target]Check{tgt: chk})
	waitState(t, c, tgt, StateUp)

	mu.Lock()
	first := got[0]
	mu.Unlock()
	if diff := cmp.Diff(dial{"tcp", tgt, 8080}, first, equateAddrs); diff != "" {
		t.Errorf("dial (-want +got):\n%s", diff)
	}
	if host, _ := srv.host.Load().(string); host != "192.0.2.11:8080" {
		t.Errorf("Host header = %q, want the realserver's address and check port", host)
	}
}

type dialerFunc func(ctx context.Context, network string, t Target, port uint16) (net.Conn, error)

func (f dialerFunc) DialContext(ctx context.Context, network string, t Target, port uint16) (net.Conn, error) {
	return f(ctx, network, t, port)
}

func TestCheckerChangedCheckRestartsProbe(t *testing.T) {
	d := &fakeDialer{}
	c, rec := start(t, Options{Dialer: d})
	tgt := targetAt(t, "192.0.2.11:80")
	old := withType(fast, CheckTCP)
	old.Port = 1001
	c.Update(map[Target]Check{tgt: old})
	waitState(t, c, tgt, StateUp)

	changed := old
	changed.Port = 1002
	c.Update(map[Target]Check{tgt: changed})
	onPort := func(p uint16) func(dial) bool {
		return func(d dial) bool { return d.Target == tgt && d.Port == p }
	}
	waitFor(t, "probes on the new port", func() bool { return d.count(onPort(1002)) >= 2 })
	// A dial the old probe began before it was stopped may land late; after
	// two more new-port probes none may.
	before := d.count(onPort(1001))
	n := d.count(onPort(1002))
	waitFor(t, "two more probes on the new port", func() bool { return d.count(onPort(1002)) >= n+2 })
	if after := d.count(onPort(1001)); after != before {
		t.Errorf("old probe still running: %d dials on the old port, then %d", before, after)
	}
	// The verdict survives the restart.
	if diff := cmp.Diff([]State{StateUp}, rec.of(tgt)); diff != "" {
		t.Errorf("OnChange states (-want +got):\n%s", diff)
	}

	// The restarted probe still decides: take the realserver down.
	d.setDown(tgt, true)
	waitState(t, c, tgt, StateDown)
}

// probeGoroutines counts the goroutines running a probe loop, whatever
// other tests leave winding down.
func probeGoroutines() int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			return strings.Count(string(buf[:n]), "health.(*prober).run(")
		}
		buf = make([]byte, 2*len(buf))
	}
}

func TestCheckerUpdateDoesNotLeakGoroutines(t *testing.T) {
	base := runtime.NumGoroutine()
	d := &fakeDialer{}
	c := New(Options{Dialer: d})
	check := withType(fast, CheckTCP)
	check.Rise = 1

	targets := func(from, to int, chk Check) map[Target]Check {
		m := make(map[Target]Check)
		for i := from; i < to; i++ {
			m[targetAt(t, fmt.Sprintf("192.0.2.%d:80", i))] = chk
		}
		return m
	}
	allUp := func(m map[Target]Check) func() bool {
		return func() bool {
			states := c.States()
			if len(states) != len(m) {
				return false
			}
			for tgt := range m {
				if states[tgt] != StateUp {
					return false
				}
			}
			return true
		}
	}
	goroutinesAtMost := func(n int) func() bool {
		return func() bool { return runtime.NumGoroutine() <= n }
	}

	// Update before Run: applied when Run starts.
	first := targets(10, 30, check)
	c.Update(first)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	waitFor(t, "first set up", allUp(first))
	if n := probeGoroutines(); n != len(first) {
		t.Errorf("%d probe goroutines for %d targets, want one each", n, len(first))
	}

	// Half kept, a quarter changed, a quarter removed, ten added.
	changed := check
	changed.Port = 8080
	second := targets(10, 20, check)
	for tgt, chk := range targets(20, 25, changed) {
		second[tgt] = chk
	}
	for tgt, chk := range targets(30, 40, check) {
		second[tgt] = chk
	}
	c.Update(second)
	waitFor(t, "second set up", allUp(second))
	waitFor(t, "goroutines of removed targets to exit", func() bool { return probeGoroutines() == len(second) })

	c.Update(nil)
	waitFor(t, "no targets", func() bool { return len(c.States()) == 0 })
	waitFor(t, "every probe goroutine to exit", func() bool { return probeGoroutines() == 0 })

	c.Update(first)
	waitFor(t, "first set up again", allUp(first))
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run() = %v, want nil", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	// Run waits for its probes before returning.
	if n := probeGoroutines(); n != 0 {
		t.Errorf("%d probe goroutines after Run returned, want 0", n)
	}
	// Only the goroutine that called Run may still be on its way out.
	waitFor(t, "goroutines back to the baseline", goroutinesAtMost(base))
}

func TestCheckerRunTwice(t *testing.T) {
	c := New(Options{Dialer: &fakeDialer{}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	waitFor(t, "Run to start", c.running.Load)

	if err := c.Run(ctx); !errors.Is(err, ErrAlreadyRunning) {
		t.Errorf("second Run() = %v, want ErrAlreadyRunning", err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("first Run() = %v, want nil", err)
	}
}
