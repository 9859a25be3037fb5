package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// demoDirectorFailover is the demo's last step: the director that owns the DR VIP is
// killed while a client keeps one HTTP keep-alive connection busy through it; the
// other director takes the VIP over, the client's ARP entry follows, and the same
// connection carries on. The killed director then restarts and stays a standby.
func (l *Lab) demoDirectorFailover(ctx context.Context, w io.Writer, bin string, step func(string, ...any)) error {
	step("back to full strength: restarting whatever the last step killed")
	for _, h := range HostsWithRole(RoleDirector, RoleWitness) {
		if err := l.Signal(h.Name, 0); !errors.Is(err, os.ErrProcessDone) {
			continue
		}
		fmt.Fprintf(w, "restarting %s with its data directory\n", h.Name)
		p, err := l.StartDirector(bin, h.Name)
		if err != nil {
			return err
		}
		if err := l.WaitTCP(ctx, "client", netip.AddrPortFrom(h.Front, APIPort).String(), p); err != nil {
			return err
		}
	}
	vip := demoServices[0].vip
	owner, err := l.waitVIPOwner(ctx, bin, []string{"w1", "d1", "d2"}, vip, "")
	if err != nil {
		return err
	}
	if err := l.demoCLI(ctx, w, bin, "d1", "vip", "list"); err != nil {
		return err
	}

	step("one HTTP keep-alive connection from the client through %s, a GET every 20 ms", vip)
	run := l.startKeepAlive(ctx, "http://"+vip+"/")
	defer run.stop()
	if err := run.waitRequests(ctx, 25); err != nil {
		return err
	}
	fmt.Fprintf(w, "%d requests so far over %d connection(s)\n", run.requests.Load(), run.dials.Load())

	step("killing %s, the owner of %s, with SIGKILL while the requests keep coming", owner, vip)
	fmt.Fprintf(w, "$ kill -KILL $(cat %s)\n", l.pidFile(owner))
	killed := time.Now()
	if err := l.Signal(owner, syscall.SIGKILL); err != nil {
		return err
	}
	next, err := l.waitVIPOwner(ctx, bin, []string{"w1", "d1", "d2"}, vip, owner)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "%s owns %s %v after the kill\n", next, vip, time.Since(killed).Round(10*time.Millisecond))
	if err := run.waitRequests(ctx, run.requests.Load()+50); err != nil {
		return err
	}
	if err := l.demoCLI(ctx, w, bin, next, "vip", "list"); err != nil {
		return err
	}
	fmt.Fprintf(w, "$ ip -n %s neigh show %s\n", l.NS("client"), vip)
	if out, err := l.Exec(ctx, "client", "ip", "neigh", "show", vip); err == nil {
		_, _ = w.Write(out)
	}
	n, dials, gap, failed := run.stop()
	fmt.Fprintf(w, "%d requests over %d connection(s), %d failed; the longest pause was %v (the new owner waits out the dead one's lease, %v)\n",
		n, dials, failed, gap.Round(10*time.Millisecond), LeaseDuration)

	step("%s restarts: it catches up and stays a standby (no automatic failback)", owner)
	p, err := l.StartDirector(bin, owner)
	if err != nil {
		return err
	}
	h, _ := LookupHost(owner)
	if err := l.WaitTCP(ctx, "client", netip.AddrPortFrom(h.Front, APIPort).String(), p); err != nil {
		return err
	}
	// Its own copy of the state shows the new owner once it has caught up.
	if _, err := l.waitVIPOwner(ctx, bin, []string{owner}, vip, owner); err != nil {
		return err
	}
	fmt.Fprintf(w, "to hand %s back: raftlb vip move %s --to %s\n", vip, vip, owner)
	return l.demoCLI(ctx, w, bin, owner, "vip", "list")
}

// waitVIPOwner polls `vip list` on hosts, in turn, until one shows vip with an
// owner other than not.
func (l *Lab) waitVIPOwner(ctx context.Context, bin string, hosts []string, vip, not string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	var last error
	for i := 0; ; i++ {
		out, err := l.CLI(ctx, bin, hosts[i%len(hosts)], "vip", "list", "-o", "json", "--timeout", "2s")
		if err == nil {
			var list struct {
				Addresses []struct {
					Address string `json:"address"`
					Owner   string `json:"owner"`
				} `json:"addresses"`
			}
			if err = json.Unmarshal(out, &list); err == nil {
				for _, a := range list.Addresses {
					if a.Address == vip && a.Owner != "" && a.Owner != not {
						return a.Owner, nil
					}
				}
				err = fmt.Errorf("%s is still owned by %q", vip, not)
			}
		}
		last = err
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("wait for an owner of %s: %w (last: %w)", vip, ctx.Err(), last)
		case <-tick.C:
		}
	}
}

// keepAlive sends GETs over one keep-alive connection (dialling again only if it
// breaks) and counts requests, dials, failures and the longest pause.
type keepAlive struct {
	requests, dials, failed atomic.Int64
	mu                      sync.Mutex
	last                    time.Time
	gap                     time.Duration
	cancel                  context.CancelFunc
	done                    chan struct{}
}

func (l *Lab) startKeepAlive(ctx context.Context, url string) *keepAlive {
	ctx, cancel := context.WithCancel(ctx)
	k := &keepAlive{cancel: cancel, done: make(chan struct{}), last: time.Now()}
	tr := &http.Transport{DialContext: l.DialContext("client"), MaxIdleConnsPerHost: 1, MaxConnsPerHost: 1}
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	trace := &httptrace.ClientTrace{ConnectStart: func(string, string) { k.dials.Add(1) }}
	go func() {
		defer close(k.done)
		defer tr.CloseIdleConnections()
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			if _, err := demoGET(httptrace.WithClientTrace(ctx, trace), client, url); err != nil {
				if ctx.Err() == nil {
					k.failed.Add(1)
				}
				continue
			}
			now := time.Now()
			k.mu.Lock()
			k.gap = max(k.gap, now.Sub(k.last))
			k.last = now
			k.mu.Unlock()
			k.requests.Add(1)
		}
	}()
	return k
}

// waitRequests waits until n requests have succeeded.
func (k *keepAlive) waitRequests(ctx context.Context, n int64) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for k.requests.Load() < n {
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for %d requests (%d so far): %w", n, k.requests.Load(), ctx.Err())
		case <-tick.C:
		}
	}
	return nil
}

// stop ends the requests and returns the totals and the longest pause.
func (k *keepAlive) stop() (requests, dials int64, gap time.Duration, failed int64) {
	k.cancel()
	<-k.done
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.requests.Load(), k.dials.Load(), k.gap, k.failed.Load()
}
