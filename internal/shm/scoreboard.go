//go:build linux

package shm

import (
	"errors"
	"fmt"
	"sync/atomic"
	"time"
	"unsafe"
)

// The scoreboard is a header followed by fixed-size records, one per worker
// process (not per slot: during a reload the old and the new worker of a
// slot are both alive and both counted). Each record is six cache lines and
// starts on a cache-line boundary, so workers bumping their own counters do
// not contend for a line with each other. Answers are counted by status
// class and by duration (a histogram), so the master's /metrics has them
// for all workers without a message per request.
//
// Every field is a uint64 updated with atomics. Workers write their own
// record; the master writes the header and the identity fields of a record
// when it hands it out. The master and `herd status` treat everything here
// as untrusted input — a worker could scribble on any of it (Apache's
// CVE-2019-0211) — so nothing read back is used as an index or a pid to
// signal without a bounds check against the master's own bookkeeping.
const (
	RecordSize = 384
	headerSize = 512
	magic      = 0x68657264_73636231 // "herdscb1"
	layout     = 3
)

// Field names one uint64 of a worker record.
type Field int

// Record fields. Accepts, Wakeups, Spurious and Timeouts are the strategy's
// counters: a wakeup is a return from the call that waits for a connection
// (accept4, epoll_wait, a lock); a spurious wakeup is one that found nothing
// to accept; a timeout is a return because a bound expired (SO_RCVTIMEO,
// accept_mutex_delay), which is neither.
const (
	PID Field = iota
	Slot
	Generation
	State
	Started   // unix nanoseconds
	Heartbeat // unix nanoseconds, refreshed by the worker
	Accepts
	Wakeups
	Spurious
	Timeouts
	Active   // connections open now
	Requests // HTTP requests answered
	BytesOut // bytes written to clients
	Status1xx
	Status2xx
	Status3xx
	Status4xx
	Status5xx
	DurationSum     // nanoseconds, all answers
	DurationBucket0 // the first of NumBuckets counts of answers within DurationBuckets[i] (not cumulative)
	// Passed (fdpass): the number of the last descriptor this worker took
	// from the master. The master closes its copies up to it, and sends
	// the ones after it elsewhere if the worker dies.
	Passed    = DurationBucket0 + NumBuckets
	numFields = Passed + 1
)

// Observe counts an answer of status that took d, from request to last byte.
func (r *Record) Observe(status int, d time.Duration) {
	if c := status / 100; c >= 1 && c <= 5 {
		r.v[Status1xx+Field(c-1)].Add(1)
	}
	r.v[DurationSum].Add(uint64(max(d, 0)))
	secs := d.Seconds()
	for i, le := range DurationBuckets {
		if secs <= le {
			r.v[DurationBucket0+Field(i)].Add(1)
			return
		}
	}
}

// Header fields. The Retired* fields hold the counters of records that were
// released, so totals survive reloads and restarts.
const (
	hMagic = iota
	hLayout
	hRecords
	hMasterPID
	hGeneration
	hWorkers
	hReloads
	hRestarts
	hRetiredAccepts
	hRetiredWakeups
	hRetiredSpurious
	hRetiredTimeouts
	hRetiredRequests
	hRetiredBytes
	hMutex    // the accept mutex's futex word (low 32 bits): holder's pid, and a bit for sleepers
	hTLSMutex // the TLS listeners' accept mutex, likewise
	hRetired  // the retired totals of every field, at hRetired+field
)

// Worker states stored in the State field.
const (
	StateFree uint64 = iota
	StateStarting
	StateReady
	StateStopping
)

// StateName is the word `herd status` shows for a State value.
func StateName(s uint64) string {
	switch s {
	case StateFree:
		return "free"
	case StateStarting:
		return "starting"
	case StateReady:
		return "ready"
	case StateStopping:
		return "stopping"
	}
	return fmt.Sprintf("state(%d)", s)
}

// Scoreboard is a view of a shared region as a header and records.
type Scoreboard struct {
	mem []byte
	n   int
}

// Size is the number of bytes a scoreboard with n records needs.
func Size(n int) int { return headerSize + n*RecordSize }

// NewScoreboard formats mem, which must be zeroed and Size(n) bytes long, as
// a scoreboard of n records. The master calls it once on a fresh region.
func NewScoreboard(mem []byte, n int) (*Scoreboard, error) {
	if n <= 0 || len(mem) < Size(n) {
		return nil, fmt.Errorf("shm: %d bytes cannot hold %d records", len(mem), n)
	}
	s := &Scoreboard{mem: mem, n: n}
	s.h(hLayout).Store(layout)
	s.h(hRecords).Store(uint64(n))
	s.h(hMagic).Store(magic)
	return s, nil
}

// AttachScoreboard reads the layout of an existing scoreboard from mem,
// checking it rather than trusting it.
func AttachScoreboard(mem []byte) (*Scoreboard, error) {
	if len(mem) < headerSize {
		return nil, errors.New("shm: region too small for a scoreboard")
	}
	s := &Scoreboard{mem: mem}
	if s.h(hMagic).Load() != magic {
		return nil, errors.New("shm: not a herd scoreboard")
	}
	if v := s.h(hLayout).Load(); v != layout {
		return nil, fmt.Errorf("shm: scoreboard layout %d, this herd reads %d", v, layout)
	}
	n := s.h(hRecords).Load()
	if n == 0 || n > uint64((len(mem)-headerSize)/RecordSize) {
		return nil, fmt.Errorf("shm: scoreboard claims %d records in %d bytes", n, len(mem))
	}
	s.n = int(n)
	return s, nil
}

// Len is the number of records.
func (s *Scoreboard) Len() int { return s.n }

func (s *Scoreboard) h(i int) *atomic.Uint64 {
	return (*atomic.Uint64)(unsafe.Pointer(&s.mem[i*8]))
}

// Record returns record i, or nil if i is out of range.
func (s *Scoreboard) Record(i int) *Record {
	if i < 0 || i >= s.n {
		return nil
	}
	return (*Record)(unsafe.Pointer(&s.mem[headerSize+i*RecordSize]))
}

// SetMaster records the master's pid, current generation and target worker count.
func (s *Scoreboard) SetMaster(pid, generation, workers int) {
	s.h(hMasterPID).Store(uint64(pid))
	s.h(hGeneration).Store(uint64(generation))
	s.h(hWorkers).Store(uint64(workers))
}

// CountReload and CountRestart bump the master's event counters.
func (s *Scoreboard) CountReload()  { s.h(hReloads).Add(1) }
func (s *Scoreboard) CountRestart() { s.h(hRestarts).Add(1) }

// Claim prepares a free record for a new worker and returns its index, or
// -1 if every record is taken.
func (s *Scoreboard) Claim(slot, generation int, now int64) int {
	for i := 0; i < s.n; i++ {
		r := s.Record(i)
		if r.f(State).CompareAndSwap(StateFree, StateStarting) {
			for f := PID; f < numFields; f++ {
				if f != State {
					r.f(f).Store(0)
				}
			}
			r.f(Slot).Store(uint64(slot))
			r.f(Generation).Store(uint64(generation))
			r.f(Started).Store(uint64(now))
			return i
		}
	}
	return -1
}

// Release frees record i after its worker exited, moving its counters into
// the retired totals.
func (s *Scoreboard) Release(i int) {
	r := s.Record(i)
	if r == nil {
		return
	}
	for f, h := range map[Field]int{
		Accepts: hRetiredAccepts, Wakeups: hRetiredWakeups, Spurious: hRetiredSpurious,
		Timeouts: hRetiredTimeouts, Requests: hRetiredRequests, BytesOut: hRetiredBytes,
	} {
		s.h(h).Add(r.Load(f))
	}
	for f := Status1xx; f < numFields; f++ {
		s.h(hRetired + int(f)).Add(r.Load(f))
	}
	r.f(Active).Store(0)
	r.f(PID).Store(0)
	r.f(State).Store(StateFree)
}

// Record is one worker's slice of the scoreboard. Its methods are safe for
// concurrent use by any number of processes.
type Record struct {
	v [RecordSize / 8]atomic.Uint64
}

func (r *Record) f(f Field) *atomic.Uint64 { return &r.v[f] }

// Add adds n to field f and returns the new value.
func (r *Record) Add(f Field, n int64) uint64 { return r.v[f].Add(uint64(n)) }

// Inc adds one to field f.
func (r *Record) Inc(f Field) { r.v[f].Add(1) }

// Load reads field f.
func (r *Record) Load(f Field) uint64 { return r.v[f].Load() }

// Store sets field f.
func (r *Record) Store(f Field, v uint64) { r.v[f].Store(v) }

// WorkerStat is a copy of one live record, as `herd status` reports it.
type WorkerStat struct {
	Record     int    `json:"record"`
	PID        int    `json:"pid"`
	Slot       int    `json:"slot"`
	Generation int    `json:"generation"`
	State      string `json:"state"`
	Started    int64  `json:"started_unix_ns"`
	Heartbeat  int64  `json:"heartbeat_unix_ns"`
	Accepts    uint64 `json:"accepts"`
	Wakeups    uint64 `json:"wakeups"`
	Spurious   uint64 `json:"spurious_wakeups"`
	Timeouts   uint64 `json:"timeouts"`
	Active     uint64 `json:"active"`
	Requests   uint64 `json:"requests"`
	BytesOut   uint64 `json:"bytes_out"`
	// Answers by status class (1xx to 5xx), and their durations: the sum
	// and the count per DurationBuckets bucket (not cumulative).
	Statuses        [5]uint64          `json:"statuses"`
	DurationSum     uint64             `json:"duration_sum_ns"`
	DurationBuckets [NumBuckets]uint64 `json:"duration_buckets"`
}

// Add adds w's counters (and its open connections) to t's.
func (t *WorkerStat) Add(w WorkerStat) {
	t.Accepts += w.Accepts
	t.Wakeups += w.Wakeups
	t.Spurious += w.Spurious
	t.Timeouts += w.Timeouts
	t.Active += w.Active
	t.Requests += w.Requests
	t.BytesOut += w.BytesOut
	for i := range w.Statuses {
		t.Statuses[i] += w.Statuses[i]
	}
	t.DurationSum += w.DurationSum
	for i := range w.DurationBuckets {
		t.DurationBuckets[i] += w.DurationBuckets[i]
	}
}

// Snapshot is a copy of the whole scoreboard at one moment.
type Snapshot struct {
	MasterPID  int    `json:"master_pid"`
	Generation int    `json:"generation"`
	Workers    int    `json:"workers"`
	Reloads    uint64 `json:"reloads"`
	Restarts   uint64 `json:"restarts"`
	// MutexHolder is the pid holding the accept mutex (strategies mutex
	// and nginx), or 0.
	MutexHolder int          `json:"accept_mutex_holder"`
	Live        []WorkerStat `json:"live"`
	// Total adds the live records to those of workers that have exited.
	Total WorkerStat `json:"total"`
}

// Snapshot copies the scoreboard. Values are clamped into int range so a
// corrupted record cannot produce a negative pid or slot.
func (s *Scoreboard) Snapshot() Snapshot {
	clamp := func(v uint64) int {
		if v > 1<<31-1 {
			return -1
		}
		return int(v)
	}
	snap := Snapshot{
		MasterPID:   clamp(s.h(hMasterPID).Load()),
		Generation:  clamp(s.h(hGeneration).Load()),
		Workers:     clamp(s.h(hWorkers).Load()),
		Reloads:     s.h(hReloads).Load(),
		Restarts:    s.h(hRestarts).Load(),
		MutexHolder: s.AcceptMutex().Holder(),
	}
	t := &snap.Total
	t.Accepts = s.h(hRetiredAccepts).Load()
	t.Wakeups = s.h(hRetiredWakeups).Load()
	t.Spurious = s.h(hRetiredSpurious).Load()
	t.Timeouts = s.h(hRetiredTimeouts).Load()
	t.Requests = s.h(hRetiredRequests).Load()
	t.BytesOut = s.h(hRetiredBytes).Load()
	for i := range t.Statuses {
		t.Statuses[i] = s.h(hRetired + int(Status1xx) + i).Load()
	}
	t.DurationSum = s.h(hRetired + int(DurationSum)).Load()
	for i := range t.DurationBuckets {
		t.DurationBuckets[i] = s.h(hRetired + int(DurationBucket0) + i).Load()
	}
	for i := 0; i < s.n; i++ {
		r := s.Record(i)
		st := r.Load(State)
		if st == StateFree {
			continue
		}
		w := WorkerStat{
			Record:      i,
			PID:         clamp(r.Load(PID)),
			Slot:        clamp(r.Load(Slot)),
			Generation:  clamp(r.Load(Generation)),
			State:       StateName(st),
			Started:     int64(r.Load(Started)),
			Heartbeat:   int64(r.Load(Heartbeat)),
			Accepts:     r.Load(Accepts),
			Wakeups:     r.Load(Wakeups),
			Spurious:    r.Load(Spurious),
			Timeouts:    r.Load(Timeouts),
			Active:      r.Load(Active),
			Requests:    r.Load(Requests),
			BytesOut:    r.Load(BytesOut),
			DurationSum: r.Load(DurationSum),
		}
		for i := range w.Statuses {
			w.Statuses[i] = r.Load(Status1xx + Field(i))
		}
		for i := range w.DurationBuckets {
			w.DurationBuckets[i] = r.Load(DurationBucket0 + Field(i))
		}
		snap.Live = append(snap.Live, w)
		t.Add(w)
	}
	return snap
}
