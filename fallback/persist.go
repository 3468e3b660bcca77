package fallback

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/handoff-lb/handoff/internal/atomicfile"
)

// StateFile is the name of the saved affinity table inside Options.StateDir.
//
// It is JSON: {"version":1,"saved_at":T,"pins":[{"service","backend",
// "client","key","expires"}, ...]}, one pin per line, with expires an
// absolute RFC 3339 wall-clock time, absent for a pin that never expires.
const StateFile = "affinity.json"

const stateVersion = 1

type stateFile struct {
	Version int        `json:"version"`
	SavedAt time.Time  `json:"saved_at"`
	Pins    []statePin `json:"pins"`
}

type statePin struct {
	Service string     `json:"service"`
	Backend string     `json:"backend"`
	Client  netip.Addr `json:"client"`
	Key     string     `json:"key,omitempty"`
	Expires *time.Time `json:"expires,omitempty"`
}

// record is a pin outside the shards: loaded and pending, or being saved.
type record struct {
	service, backend string
	client           netip.Addr
	key              string
	expires          int64 // since-base nanoseconds; never = no expiry
}

// load reads the state file. A missing file is an empty table; a file that
// does not parse is renamed aside, logged, and treated as empty. Only an
// unusable state directory is an error.
func (d *Dataplane) load() ([]record, error) {
	if err := os.MkdirAll(d.stateDir, 0o700); err != nil {
		return nil, fmt.Errorf("affinity table: state directory: %w", err)
	}
	path := filepath.Join(d.stateDir, StateFile)
	if stale, err := atomicfile.RemoveStale(path); err != nil {
		d.log.WithError(err).Warn("affinity table: removing temporary files of an interrupted save")
	} else if len(stale) > 0 {
		d.log.WithField("files", stale).Warn("affinity table: removed the temporary files of an interrupted save")
	}
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("affinity table: %w", err)
	}
	recs, expired, err := d.decode(f)
	f.Close()
	if err != nil {
		aside := path + ".corrupt-" + time.Now().UTC().Format("20060102T150405.000000000Z")
		log := d.log.WithFields(logrus.Fields{"file": path, "err": err})
		if rerr := os.Rename(path, aside); rerr != nil {
			log.WithField("rename_err", rerr).Error("affinity table: state file is corrupt and could not be moved aside; starting empty")
		} else {
			log.WithField("moved_to", aside).Error("affinity table: state file is corrupt; moved aside, starting empty")
		}
		return nil, nil
	}
	d.log.WithFields(logrus.Fields{"file": path, "pins": len(recs), "expired": expired}).
		Info("affinity table: loaded; pins wait for the first sync")
	return recs, nil
}

// decode parses a state file, dropping pins already expired.
func (d *Dataplane) decode(r io.Reader) (recs []record, expired int, err error) {
	dec := json.NewDecoder(bufio.NewReader(r))
	var sf stateFile
	if err := dec.Decode(&sf); err != nil {
		return nil, 0, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, 0, errors.New("trailing data after the table")
	}
	if sf.Version != stateVersion {
		return nil, 0, fmt.Errorf("version %d, want %d", sf.Version, stateVersion)
	}
	now := d.since()
	recs = make([]record, 0, len(sf.Pins))
	for i, p := range sf.Pins {
		if p.Service == "" || p.Backend == "" || !p.Client.IsValid() {
			return nil, 0, fmt.Errorf("pin %d: service, backend and client are required", i)
		}
		rec := record{service: p.Service, backend: p.Backend, client: p.Client.Unmap(), key: p.Key, expires: never}
		if p.Expires != nil {
			rec.expires = int64(p.Expires.Sub(d.base))
			if rec.expires <= now {
				expired++
				continue
			}
		}
		recs = append(recs, rec)
	}
	return recs, expired, nil
}

// dirty reports whether any pin changed since the last save.
func (d *Dataplane) dirty() bool {
	for i := range d.shards {
		if d.shards[i].dirty.Load() {
			return true
		}
	}
	return false
}

// save writes the table atomically: a temporary file in the state directory,
// fsync, rename over StateFile, fsync of the directory. Before the first Sync
// the pins loaded from disk are written back unchanged.
func (d *Dataplane) save() (err error) {
	d.saveMu.Lock()
	defer d.saveMu.Unlock()
	for i := range d.shards {
		d.shards[i].dirty.Store(false)
	}
	defer func() {
		if err != nil {
			d.shards[0].dirty.Store(true) // retry at the next interval
		}
	}()

	if err := atomicfile.Write(filepath.Join(d.stateDir, StateFile), d.writeTable); err != nil {
		return fmt.Errorf("affinity table: save: %w", err)
	}
	return nil
}

// writeTable streams the table as JSON, one shard at a time, so no shard is
// locked while writing and no copy of the whole table is made.
func (d *Dataplane) writeTable(w *bufio.Writer) error {
	// Expiries become wall-clock times relative to the wall clock now, not
	// at New, so a clock stepped since (NTP at boot) does not shift them.
	wall := d.now()
	clock := wallClock{wall: wall, since: int64(wall.Sub(d.base))}
	fmt.Fprintf(w, `{"version":%d,"saved_at":%q,"pins":[`, stateVersion, wall.UTC().Format(time.RFC3339Nano))
	var line []byte
	sep := "\n"
	emit := func(r record) error {
		line = appendPin(append(line[:0], sep...), r, clock)
		sep = ",\n"
		_, err := w.Write(line)
		return err
	}

	d.syncMu.Lock()
	t, pending := d.cfg.Load(), d.pending
	d.syncMu.Unlock()
	if t == nil {
		for _, r := range pending {
			if err := emit(r); err != nil {
				return err
			}
		}
	}
	var batch []record
	for i := range d.shards {
		sh := &d.shards[i]
		batch = batch[:0]
		now := d.since()
		sh.mu.RLock()
		t := d.cfg.Load()
		for k, e := range sh.pins {
			exp := e.expires.Load()
			if exp <= now || t.backend(k.service, e.backend.name) != e.backend {
				continue
			}
			batch = append(batch, record{service: k.service, backend: e.backend.name, client: k.client, key: e.key, expires: exp})
		}
		sh.mu.RUnlock()
		for _, r := range batch {
			if err := emit(r); err != nil {
				return err
			}
		}
	}
	_, err := w.WriteString("\n]}\n")
	return err
}

// appendPin appends r as the JSON form of statePin, without reflection: a
// save of a million pins is a few hundred milliseconds.
func appendPin(b []byte, r record, clock wallClock) []byte {
	b = append(b, `{"service":`...)
	b = appendJSONString(b, r.service)
	b = append(b, `,"backend":`...)
	b = appendJSONString(b, r.backend)
	b = append(b, `,"client":"`...)
	b = r.client.AppendTo(b)
	b = append(b, '"')
	if r.key != "" {
		b = append(b, `,"key":`...)
		b = appendJSONString(b, r.key)
	}
	if r.expires != never {
		b = append(b, `,"expires":"`...)
		b = clock.at(r.expires).AppendFormat(b, time.RFC3339Nano)
		b = append(b, '"')
	}
	return append(b, '}')
}

// wallClock converts since-base times to UTC wall-clock times.
type wallClock struct {
	wall  time.Time // a reading of the table's clock
	since int64     // the same instant, since base
}

func (c wallClock) at(since int64) time.Time {
	return c.wall.Add(time.Duration(since - c.since)).UTC()
}

// appendJSONString appends s as a JSON string. Plain ASCII is copied as is;
// anything else goes through encoding/json.
func appendJSONString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' {
			q, _ := json.Marshal(s) // a string always marshals
			return append(b, q...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}
