package capture

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
)

// pcapng block types the scan tells apart.
const (
	blockSHB = 0x0A0D0D0A
	blockEPB = 0x00000006
	// byteOrderMagic is the first field of a section header's body, as
	// written in the section's byte order.
	byteOrderMagic = 0x1A2B3C4D
	// maxBlock bounds a block's length: a longer one is corruption, not a
	// packet of ours (MaxSnapLen bytes and a few comments).
	maxBlock = 1 << 20
)

// scanResult is what an existing capture file holds.
type scanResult struct {
	// valid is the offset just past the last complete block; bytes after
	// it are a block a crash or a full disk cut short.
	valid int64
	// packets counts the enhanced packet blocks in the valid part.
	packets int
	// pcapng is false when the file does not start with a section header:
	// it is not ours to append to.
	pcapng bool
}

// scanFile walks the blocks of a pcapng file. A block is complete when
// its leading and trailing lengths agree and it ends inside the file; the
// first block that is not ends the valid part. Every section header
// resets the byte order, so files with sections of either order scan.
func scanFile(r io.Reader) (scanResult, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	var res scanResult
	var order binary.ByteOrder = binary.LittleEndian
	var head [12]byte
	body := make([]byte, 0, 4096)
	for {
		n, err := io.ReadFull(br, head[:8])
		if err != nil {
			if n == 0 && errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return res, nil // the end, or a block cut short in its header
			}
			return res, err
		}
		// A section header's type reads the same in both orders; its
		// byte-order magic, the first field of its body, sets the order.
		typ := binary.LittleEndian.Uint32(head[0:4])
		if typ == blockSHB {
			if _, err := io.ReadFull(br, head[8:12]); err != nil {
				return res, nil
			}
			switch {
			case binary.LittleEndian.Uint32(head[8:12]) == byteOrderMagic:
				order = binary.LittleEndian
			case binary.BigEndian.Uint32(head[8:12]) == byteOrderMagic:
				order = binary.BigEndian
			default:
				return res, nil
			}
		} else {
			if res.valid == 0 {
				return res, nil // not a pcapng file
			}
			typ = order.Uint32(head[0:4])
		}
		length := order.Uint32(head[4:8])
		if length < 12 || length%4 != 0 || length > maxBlock {
			return res, nil
		}
		read := 8
		if typ == blockSHB {
			read = 12
		}
		rest := int(length) - read
		if cap(body) < rest {
			body = make([]byte, rest)
		}
		body = body[:rest]
		if _, err := io.ReadFull(br, body); err != nil {
			return res, nil // cut short
		}
		if order.Uint32(body[rest-4:]) != length {
			return res, nil
		}
		if typ == blockSHB {
			res.pcapng = true
		}
		if typ == blockEPB {
			res.packets++
		}
		res.valid += int64(length)
	}
}

// resume decides what to do with a capture file an earlier run left at
// Path: keep appending to it (a new section, after cutting off a block a
// crash or a full disk left incomplete) when it is ours and has room,
// otherwise rotate it into the ring. Either way nothing an earlier run
// captured is overwritten; only the ring's size bounds what is kept. It
// returns whether the file is there to append to, with its valid size and
// packet count.
func (c *Capture) resume() (appendTo bool, err error) {
	f, err := os.OpenFile(c.o.Path, os.O_RDWR, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("capture: open %s: %w", c.o.Path, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return false, fmt.Errorf("capture: stat %s: %w", c.o.Path, err)
	}
	if st.Size() == 0 {
		return false, nil // nothing to keep: the new section starts it
	}
	res, err := scanFile(f)
	if err != nil {
		return false, fmt.Errorf("capture: read %s: %w", c.o.Path, err)
	}
	if !res.pcapng || res.valid >= c.o.SegmentBytes || res.packets >= c.o.SegmentPackets {
		// Not ours, or full: keep it whole as the ring's newest old
		// segment.
		return false, c.shift()
	}
	if res.valid < st.Size() {
		if err := f.Truncate(res.valid); err != nil {
			return false, fmt.Errorf("capture: cut the incomplete last block of %s: %w", c.o.Path, err)
		}
		c.truncated = st.Size() - res.valid
	}
	c.resumed = true
	c.segPkts, c.segBytes = res.packets, res.valid
	return true, nil
}
