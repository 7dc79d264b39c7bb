package dataplane

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
)

// QueueStats is one line of /proc/net/netfilter/nfnetlink_queue: the
// kernel's own view of a bound queue. It is per network namespace.
type QueueStats struct {
	Queue    uint16 `json:"queue"`
	PortID   uint32 `json:"portid"`
	Waiting  uint32 `json:"waiting"` // packets queued now, awaiting a verdict
	CopyMode uint8  `json:"copy_mode"`
	CopyLen  uint32 `json:"copy_range"`
	// Dropped: the queue was full (without fail-open); UserDropped: the
	// socket buffer was (ENOBUFS on our side).
	Dropped     uint32 `json:"queue_dropped"`
	UserDropped uint32 `json:"user_dropped"`
	// IDSequence is the id of the last packet queued: how many packets the
	// queue has ever carried.
	IDSequence uint32 `json:"id_sequence"`
}

// ProcQueuePath is where the kernel publishes QueueStats.
const ProcQueuePath = "/proc/net/netfilter/nfnetlink_queue"

// ReadQueueStats reads the kernel's queue statistics of the caller's
// network namespace; none when no queue is bound.
func ReadQueueStats() ([]QueueStats, error) {
	f, err := os.Open(ProcQueuePath)
	if err != nil {
		return nil, fmt.Errorf("read queue statistics: %w", err)
	}
	defer f.Close()
	return ParseQueueStats(f)
}

// ParseQueueStats parses the format of ProcQueuePath: per line queue,
// portid, waiting, copy mode, copy range, queue dropped, user dropped, id
// sequence and a constant 1.
func ParseQueueStats(r io.Reader) ([]QueueStats, error) {
	var out []QueueStats
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 {
			continue
		}
		if len(fields) < 8 {
			return nil, fmt.Errorf("queue statistics line %q: want at least 8 fields", sc.Text())
		}
		var n [8]uint64
		for i := range n {
			v, err := strconv.ParseUint(fields[i], 10, 32)
			if err != nil {
				return nil, fmt.Errorf("queue statistics line %q field %d: %w", sc.Text(), i+1, err)
			}
			n[i] = v
		}
		if n[0] > 65535 || n[3] > 255 {
			return nil, fmt.Errorf("queue statistics line %q: value out of range", sc.Text())
		}
		out = append(out, QueueStats{
			Queue: uint16(n[0]), PortID: uint32(n[1]), Waiting: uint32(n[2]), CopyMode: uint8(n[3]),
			CopyLen: uint32(n[4]), Dropped: uint32(n[5]), UserDropped: uint32(n[6]), IDSequence: uint32(n[7]),
		})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read queue statistics: %w", err)
	}
	return out, nil
}
