package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
)

// DefaultStateDir is where the agent keeps its ownership record.
const DefaultStateDir = "/var/lib/raftlb-agent"

const (
	stateFile    = "state.json"
	stateVersion = 1
)

// ownedAddr is an address the agent added to a link.
type ownedAddr struct {
	Link   string       `json:"link"`
	Prefix netip.Prefix `json:"prefix"`
}

// ownedSysctl is a sysctl the agent changed: Orig is restored when it is no
// longer needed, unless someone has changed it from Set since.
type ownedSysctl struct {
	Name string `json:"name"`
	Orig string `json:"orig"`
	Set  string `json:"set"`
}

// decapRecord is where decapsulation is attached.
type decapRecord struct {
	Mode   string   `json:"mode,omitempty"`
	Ifaces []string `json:"ifaces,omitempty"`
	// Created lists the Ifaces where Attach created what Detach must remove
	// (the clsact qdisc); one that was there before stays.
	Created []string `json:"created,omitempty"`
}

// record is everything the agent owns in the kernel, plus the last desired
// config so a restarted agent keeps it before it reaches a director.
type record struct {
	Version int           `json:"version"`
	Desired *Desired      `json:"desired,omitempty"`
	Links   []string      `json:"links,omitempty"`
	Sysctls []ownedSysctl `json:"sysctls,omitempty"`
	Addrs   []ownedAddr   `json:"addrs,omitempty"`
	Routes  []Route       `json:"routes,omitempty"`
	Rules   []Rule        `json:"rules,omitempty"`
	Decap   decapRecord   `json:"decap"`
}

func (r *record) empty() bool {
	return len(r.Links) == 0 && len(r.Sysctls) == 0 && len(r.Addrs) == 0 &&
		len(r.Routes) == 0 && len(r.Rules) == 0 && len(r.Decap.Ifaces) == 0
}

// stateStore persists the record as JSON in a directory.
type stateStore struct{ dir string }

func (s stateStore) path() string { return filepath.Join(s.dir, stateFile) }

// load returns the stored record, or an empty one if there is none.
func (s stateStore) load() (record, error) {
	b, err := os.ReadFile(s.path())
	if errors.Is(err, os.ErrNotExist) {
		return record{Version: stateVersion}, nil
	}
	if err != nil {
		return record{}, fmt.Errorf("read state: %w", err)
	}
	var r record
	if err := json.Unmarshal(b, &r); err != nil {
		return record{}, fmt.Errorf("parse state %s: %w", s.path(), err)
	}
	if r.Version != stateVersion {
		return record{}, fmt.Errorf("parse state %s: version %d, want %d", s.path(), r.Version, stateVersion)
	}
	return r, nil
}

// save writes the record atomically: a crash leaves the old or the new one.
func (s stateStore) save(r record) error {
	if err := os.MkdirAll(s.dir, 0o700); err != nil {
		return fmt.Errorf("create state dir: %w", err)
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("encode state: %w", err)
	}
	f, err := os.CreateTemp(s.dir, stateFile+".*")
	if err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(b); err != nil {
		f.Close()
		return fmt.Errorf("write state: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("sync state: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	if err := os.Rename(f.Name(), s.path()); err != nil {
		return fmt.Errorf("replace state: %w", err)
	}
	return nil
}

// remove deletes the record; used once everything it listed is gone.
func (s stateStore) remove() error {
	if err := os.Remove(s.path()); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove state: %w", err)
	}
	return nil
}
