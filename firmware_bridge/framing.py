"""Frame hunting for the byte-stream parsers: BM13xx replies and commands (asic) and the board
link (link). Runs unchanged on CPython and MicroPython.
"""

# How a valid frame that has another valid frame starting inside it is treated (see FrameHunter)
TRUST = 0  # the check is strong (CRC16 only): take the outer frame
OUTER_IF_FOLLOWED = 1  # the inner frame wins unless a marker follows the outer one
OUTER_IF_ONLY_FOLLOWED = 2  # the inner frame wins unless only the outer one is followed by one


class FrameHunter:
    """Byte stream to frames behind a two-byte start-of-frame `marker`.

    Finds the marker, waits for `header_len` bytes from it, asks `_size(buf, i)` for the frame
    size (0: not a frame start, drop one byte), waits for the whole frame and checks it with
    `_check(buf, i, size)`; a bad candidate is counted in `crc_errors`, loses one byte and the
    hunt goes on, so a valid frame inside a bad region is still found. An incomplete candidate
    is dropped as soon as a complete valid frame starts inside it. Subclasses turn a frame into
    its object with `_decode(buf, i, size)`.

    A weak check (CRC5) passes at a false marker by chance and can swallow the start of a real
    frame. With `_overlap` OUTER_IF_FOLLOWED or OUTER_IF_ONLY_FOLLOWED a valid frame starting
    inside a valid frame wins according to what follows each; while an inner candidate is
    incomplete the outer frame is held back: `flush()` releases it, `resync()` gives it up.

    Counters: `frames`, `crc_errors`, `discarded_bytes`. `feed` never raises on any input."""

    _overlap = TRUST

    def __init__(self, marker, header_len):
        self._mark = marker
        self._hdr = header_len
        self._buf = b""
        self.frames = 0
        self.crc_errors = 0
        self.discarded_bytes = 0

    def reset(self):
        """Drop buffered bytes (after a baud change or a chain reset); counters stay."""
        self.discarded_bytes += len(self._buf)
        self._buf = b""

    def pending(self):
        """Bytes held back waiting for the rest of a frame."""
        return len(self._buf)

    def feed(self, data):
        """The frames completed by `data` (bytes-like), in order."""
        return self._safe(data, False)

    def flush(self):
        """Frames held back for the bytes after them, e.g. when the line goes quiet."""
        return self._safe(b"", True)

    def resync(self):
        """The line went quiet with bytes pending: a complete valid frame that was held back is
        taken; otherwise the stalled frame start loses its first byte and what followed is
        parsed. Returns the frames found."""
        if not self._buf:
            return []
        out = self.flush()
        if out or not self._buf:
            return out
        buf = self._buf
        self._buf = b""
        self.discarded_bytes += 1
        return self.feed(buf[1:])

    def _size(self, buf, i):
        # size of the frame whose header starts at i (header_len bytes are there), 0 if none
        raise NotImplementedError

    def _check(self, buf, i, size):
        # True if the complete frame at i passes its CRC
        raise NotImplementedError

    def _decode(self, buf, i, size):
        raise NotImplementedError

    def _safe(self, data, final):
        try:
            return self._hunt(data, final)
        except Exception:  # defensive: bad input must never raise out of the parser
            self.discarded_bytes += len(self._buf)
            self._buf = b""
            return []

    def _hunt(self, data, final):
        if not isinstance(data, bytes):
            data = bytes(data)
        buf = self._buf + data if self._buf else data
        n = len(buf)
        mark = self._mark
        m0 = mark[0]
        hdr = self._hdr
        size_of = self._size
        check = self._check
        decode = self._decode
        overlap = self._overlap
        out: list = []
        pos = 0
        discarded = 0
        while True:
            i = buf.find(mark, pos)
            if i < 0:
                keep = n - 1 if n > pos and buf[n - 1] == m0 else n
                discarded += keep - pos
                pos = keep
                break
            discarded += i - pos
            if n - i < hdr:
                pos = i
                break
            size = size_of(buf, i)
            if not size:
                discarded += 1
                pos = i + 1
                continue
            if n - i < size:
                # a false or truncated frame start must not hold back complete frames after it
                j = self._inner(buf, i, n)
                if j < 0:
                    pos = i
                    break
                discarded += j - i
                pos = j
                continue
            if not check(buf, i, size):
                self.crc_errors += 1
                discarded += 1
                pos = i + 1
                continue
            end = i + size
            if overlap:
                j = buf.find(mark, i + 1, end + 1)  # a marker inside (or straddling the end)
                if j >= 0:
                    j = self._resolve(buf, i, end, n, j, final)
                    if j > i:
                        discarded += j - i
                        pos = j
                        continue
                    if j == i:
                        pos = i
                        break
            out.append(decode(buf, i, size))
            pos = end
        self.frames += len(out)
        self.discarded_bytes += discarded
        self._buf = buf[pos:] if pos < n else b""
        return out

    def _inner(self, buf, i, n):
        # start of the first complete valid frame after position i, or -1
        mark = self._mark
        j = buf.find(mark, i + 1)
        while j >= 0 and j + self._hdr <= n:
            size = self._size(buf, j)
            if size and j + size <= n and self._check(buf, j, size):
                return j
            j = buf.find(mark, j + 1)
        return -1

    def _followed(self, buf, end, n):
        # a marker starts right after a frame ending at `end`
        mark = self._mark
        return end + 2 <= n and buf[end] == mark[0] and buf[end + 1] == mark[1]

    def _resolve(self, buf, i, end, n, j, final):
        # The valid frame i..end has a marker at j inside it: -1 takes the frame, a position
        # after i resyncs there (a valid inner frame), i waits for the bytes of an incomplete
        # inner candidate (unless `final`).
        mark = self._mark
        alt = -1
        wait = False
        while j >= 0:
            if j + self._hdr > n:
                wait = not final
                break
            size = self._size(buf, j)
            if size:
                if j + size > n:
                    wait = not final
                    break
                if self._check(buf, j, size):
                    alt = j
                    break
            j = buf.find(mark, j + 1, end + 1)
        if self._followed(buf, end, n):
            if (alt >= 0 and self._overlap == OUTER_IF_ONLY_FOLLOWED
                    and self._followed(buf, alt + self._size(buf, alt), n)):
                return alt
            return -1
        if alt >= 0:
            return alt
        return i if wait else -1
