package flowlog

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
)

// RotatingFile is an io.WriteCloser that starts a new file when the current
// one would exceed MaxBytes: FILE becomes FILE.1, FILE.1 becomes FILE.2 and
// so on, and FILE.Keep is the oldest kept. Each Write lands whole in one
// file (the flow log writes one line per call), so no line is split across
// files. A write the disk refuses part of is cut off again, so the file
// never ends in half a line; a file that already does (a crash of an
// earlier run mid-write, or another writer) gets its line ended when
// opened, so the new run's first line starts cleanly. It is not safe for
// concurrent use; the flow log's writer goroutine is its only user.
type RotatingFile struct {
	path     string
	maxBytes int64
	keep     int
	f        *os.File
	size     int64
}

// OpenRotating opens (appending to) path. maxBytes <= 0 disables rotation;
// keep is the number of rotated files kept besides the current one.
func OpenRotating(path string, maxBytes int64, keep int) (*RotatingFile, error) {
	if path == "" {
		return nil, errors.New("flowlog: empty file name")
	}
	if keep < 0 {
		return nil, fmt.Errorf("flowlog: keep %d: must not be negative", keep)
	}
	r := &RotatingFile{path: path, maxBytes: maxBytes, keep: keep}
	if err := r.open(); err != nil {
		return nil, err
	}
	return r, nil
}

func (r *RotatingFile) open() error {
	f, err := os.OpenFile(r.path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		return fmt.Errorf("flowlog: open %s: %w", r.path, err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("flowlog: stat %s: %w", r.path, err)
	}
	r.f, r.size = f, st.Size()
	if r.size > 0 {
		var last [1]byte
		if rf, err := os.Open(r.path); err == nil {
			_, err = rf.ReadAt(last[:], r.size-1)
			rf.Close()
			if err == nil && last[0] != '\n' {
				// End the partial line rather than cut it: a reader
				// reports it as malformed, and nothing is lost.
				if n, err := f.Write([]byte{'\n'}); err == nil {
					r.size += int64(n)
				}
			}
		}
	}
	return nil
}

// Write writes p to the current file, rotating first if p would push it
// past MaxBytes. A single write larger than MaxBytes still goes into one
// (fresh) file.
func (r *RotatingFile) Write(p []byte) (int, error) {
	if r.f == nil {
		return 0, fmt.Errorf("flowlog: write %s: %w", r.path, fs.ErrClosed)
	}
	if r.maxBytes > 0 && r.size > 0 && r.size+int64(len(p)) > r.maxBytes {
		if err := r.rotate(); err != nil {
			return 0, err
		}
	}
	n, err := r.f.Write(p)
	if err != nil {
		if n > 0 {
			// Half a line is worse than none: cut it off.
			if terr := r.f.Truncate(r.size); terr != nil {
				r.size += int64(n)
				return n, fmt.Errorf("flowlog: write %s: %w (and cutting the partial line: %v)", r.path, err, terr)
			}
		}
		return 0, fmt.Errorf("flowlog: write %s: %w", r.path, err)
	}
	r.size += int64(n)
	return n, nil
}

func (r *RotatingFile) rotate() error {
	if err := r.f.Close(); err != nil {
		return fmt.Errorf("flowlog: close %s: %w", r.path, err)
	}
	r.f = nil
	if r.keep == 0 {
		if err := os.Remove(r.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("flowlog: rotate %s: %w", r.path, err)
		}
		return r.open()
	}
	// Shift from the oldest down so that nothing is overwritten before it
	// has moved; the rename onto FILE.keep drops the oldest.
	for i := r.keep - 1; i >= 1; i-- {
		from := fmt.Sprintf("%s.%d", r.path, i)
		to := fmt.Sprintf("%s.%d", r.path, i+1)
		if err := os.Rename(from, to); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("flowlog: rotate %s: %w", from, err)
		}
	}
	if err := os.Rename(r.path, r.path+".1"); err != nil {
		return fmt.Errorf("flowlog: rotate %s: %w", r.path, err)
	}
	return r.open()
}

// LastEntry reads the last complete line of the flow log at path (or, if
// that file is empty or missing, of path.1): what the previous run wrote
// last. nil when there is none or it is not a flow-log line.
func LastEntry(path string) *Entry {
	for _, p := range []string{path, path + ".1"} {
		// Only a regular file has a last line: opening a FIFO (a log
		// reader on the other end) for reading would block until someone
		// writes to it, which at start is only ourselves.
		if st, err := os.Stat(p); err != nil || !st.Mode().IsRegular() || st.Size() == 0 {
			continue
		}
		f, err := os.Open(p)
		if err != nil {
			continue
		}
		st, err := f.Stat()
		if err != nil || st.Size() == 0 {
			f.Close()
			continue
		}
		const tail = 64 << 10
		off := max(0, st.Size()-tail)
		buf := make([]byte, st.Size()-off)
		n, _ := f.ReadAt(buf, off)
		f.Close()
		buf = bytes.TrimRight(buf[:n], "\n")
		if i := bytes.LastIndexByte(buf, '\n'); i >= 0 {
			buf = buf[i+1:]
		} else if off > 0 {
			return nil // a line longer than the tail: not ours
		}
		var e Entry
		if json.Unmarshal(buf, &e) != nil {
			return nil
		}
		return &e
	}
	return nil
}

// Sync flushes the current file to storage.
func (r *RotatingFile) Sync() error {
	if r.f == nil {
		return nil
	}
	return r.f.Sync()
}

// Close closes the current file.
func (r *RotatingFile) Close() error {
	if r.f == nil {
		return nil
	}
	err := r.f.Close()
	r.f = nil
	if err != nil {
		return fmt.Errorf("flowlog: close %s: %w", r.path, err)
	}
	return nil
}
