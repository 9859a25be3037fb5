package health

import (
	"context"
	"errors"
	"log/slog"
	"maps"
	"sync"
	"sync/atomic"
)

// ErrAlreadyRunning is returned by a second call of Run.
var ErrAlreadyRunning = errors.New("health checker already running")

// Options configure a Checker. The zero value works.
type Options struct {
	// Dialer opens every probe connection; nil means a DirectDialer.
	Dialer Dialer
	// Logger receives transitions (info), invalid checks (error) and failed
	// probes (debug); nil discards.
	Logger *slog.Logger
	// OnChange is called for every transition of a target's state, after
	// States reflects it, from Run's goroutine, one call at a time and in
	// order. It must return promptly (probes wait to report while it runs);
	// it may call Update and States. Removing a target is not a transition.
	OnChange func(Target, State)
}

// Checker probes a changing set of targets. Run owns the probe goroutines,
// one per target; Update and States may be called from any goroutine, before
// or while Run runs.
type Checker struct {
	dialer   Dialer
	log      *slog.Logger
	onChange func(Target, State)
	running  atomic.Bool

	// kick tells Run that desired changed; it holds at most one signal, so
	// Update never blocks and Run reads only the latest set.
	kick    chan struct{}
	mu      sync.Mutex
	desired map[Target]Check

	// states is written only by Run's goroutine; the lock is for States.
	stateMu sync.RWMutex
	states  map[Target]State
}

// New returns a Checker with no targets. Nothing is probed until Run.
func New(opts Options) *Checker {
	c := &Checker{
		dialer:   opts.Dialer,
		log:      opts.Logger,
		onChange: opts.OnChange,
		kick:     make(chan struct{}, 1),
		states:   make(map[Target]State),
	}
	if c.dialer == nil {
		c.dialer = &DirectDialer{}
	}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	c.log = c.log.With("component", "health")
	return c
}

// Update replaces the set of targets and their checks; it does not block.
// Run starts probes for new targets, stops those of removed targets (whose
// state is forgotten) and restarts those whose Check changed (keeping the
// state, so only Rise or Fall fresh results can change it). Zero fields of a
// Check take their defaults; a target whose Check is invalid is logged and
// left Unknown. Targets with CheckNone are up at once and never probed.
func (c *Checker) Update(targets map[Target]Check) {
	cp := maps.Clone(targets)
	if cp == nil {
		cp = make(map[Target]Check)
	}
	c.mu.Lock()
	c.desired = cp
	c.mu.Unlock()
	select {
	case c.kick <- struct{}{}:
	default: // a signal is already pending; Run will read the latest set
	}
}

// States returns a snapshot of every known target's state.
func (c *Checker) States() map[Target]State {
	c.stateMu.RLock()
	defer c.stateMu.RUnlock()
	return maps.Clone(c.states)
}

// Run probes the targets given to Update until ctx is cancelled, then stops
// every probe goroutine, waits for them and returns nil. It may be called
// once; later calls return ErrAlreadyRunning.
func (c *Checker) Run(ctx context.Context) error {
	if !c.running.CompareAndSwap(false, true) {
		return ErrAlreadyRunning
	}
	var wg sync.WaitGroup
	probers := make(map[Target]*prober)
	// Unbuffered: a prober blocked here also watches its ctx, so it never
	// outlives a stop.
	out := make(chan transition)
	defer func() {
		for _, p := range probers {
			p.cancel()
		}
		wg.Wait()
	}()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-c.kick:
			c.mu.Lock()
			desired := c.desired
			c.mu.Unlock()
			c.reconcile(ctx, &wg, probers, desired, out)
		case tr := <-out:
			if probers[tr.p.target] != tr.p {
				continue // from a prober stopped since it sent
			}
			c.setState(tr.p.target, tr.p.check, tr.state, tr.err)
		}
	}
}

// reconcile converges the running probers and the state map on desired.
func (c *Checker) reconcile(ctx context.Context, wg *sync.WaitGroup, probers map[Target]*prober, desired map[Target]Check, out chan<- transition) {
	for t, p := range probers {
		if chk, ok := desired[t]; !ok || chk.WithDefaults() != p.check {
			// Not waited for: it exits on its own, its late reports are
			// ignored, and Run's final wait covers it.
			p.cancel()
			delete(probers, t)
		}
	}
	c.stateMu.Lock()
	for t := range c.states {
		if _, ok := desired[t]; !ok {
			delete(c.states, t)
		}
	}
	for t := range desired {
		if _, ok := c.states[t]; !ok {
			c.states[t] = StateUnknown
		}
	}
	c.stateMu.Unlock()

	for t, chk := range desired {
		chk = chk.WithDefaults()
		if err := chk.Validate(); err != nil {
			c.log.Error("invalid health check", targetAttrs(t, chk, "err", err)...)
			c.setState(t, chk, StateUnknown, nil)
			continue
		}
		if chk.Type == CheckNone {
			c.setState(t, chk, StateUp, nil)
			continue
		}
		if _, ok := probers[t]; ok {
			continue
		}
		p := newProber(t, chk, c.dialer, c.log)
		pctx, cancel := context.WithCancel(ctx)
		p.cancel = cancel
		initial := c.state(t)
		probers[t] = p
		wg.Go(func() { p.run(pctx, initial, out) })
	}
}

func (c *Checker) state(t Target) State {
	c.stateMu.RLock()
	defer c.stateMu.RUnlock()
	return c.states[t]
}

// setState records s for t and, if it changed, logs and reports it.
func (c *Checker) setState(t Target, chk Check, s State, probeErr error) {
	c.stateMu.Lock()
	old := c.states[t]
	c.states[t] = s
	c.stateMu.Unlock()
	if old == s {
		return
	}
	attrs := targetAttrs(t, chk, "from", old.String(), "state", s.String())
	if probeErr != nil {
		attrs = append(attrs, "err", probeErr)
	}
	c.log.Info("health changed", attrs...)
	if c.onChange != nil {
		c.onChange(t, s)
	}
}

func targetAttrs(t Target, chk Check, extra ...any) []any {
	return append([]any{
		"service", t.Service.String(),
		"realserver", t.Address.String(),
		"port", t.port(),
		"method", t.Method.String(),
		"check", chk.Type.String(),
	}, extra...)
}
