"""``--metrics PATH``: counters in shared memory, written as Prometheus text (format 0.0.4).

One :class:`MetricsStore` holds a fixed block of 64-bit counters per worker
in anonymous shared memory, created before ``--workers`` forks, so that a
scrape answered by any worker shows every worker's numbers (each labelled
``worker="k"``), and a restarted worker goes on from its predecessor's
counters: counters never go down, across SIGHUP or a worker's restart.

Each worker writes only its own block, under a per-block sequence number
(odd while a write is under way), so no lock is shared between processes:
a reader copies a block and retries when the number moved.  Labels are
bounded numbers with a slot each (WebSocket close codes 1000-1015 and
3000-4999, HTTP statuses 100-599; anything else counts as ``other``), so
the memory is fixed whatever clients send.

Bytes are counted when a session ends, as the rest of a session's numbers
(the status page also shows the open sessions' bytes so far).
"""

import mmap
import struct
import threading
from typing import Dict, List, Optional, Sequence, Tuple

#: ``le`` bounds of the session duration histogram, in seconds.
DURATION_BUCKETS: Tuple[float, ...] = (0.1, 1.0, 10.0, 60.0, 300.0, 1800.0, 3600.0,
                                       6 * 3600.0, 24 * 3600.0)

#: The content type Prometheus asks for (text exposition format 0.0.4).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Close codes with a slot of their own: RFC 6455 §7.4.1's (and IANA's) 1000-1015, and the
# ranges left to libraries (3000-3999) and applications (4000-4999).
_CLOSE_RANGES = ((1000, 1015), (3000, 4999))
_STATUS_RANGE = (100, 599)

# The block's layout: fixed slots, then the histogram, then the labelled counters.
_SEQ, _OPENED, _OPEN, _PENDING, _FROM_CLIENT, _TO_CLIENT, _DURATION_US, _DURATION_COUNT = range(8)
_BUCKETS = 8
_CLOSED = _BUCKETS + len(DURATION_BUCKETS)
_CLOSE_SLOTS = sum(high - low + 1 for low, high in _CLOSE_RANGES) + 1  # + "other"
_REFUSED = _CLOSED + _CLOSE_SLOTS
_STATUS_SLOTS = _STATUS_RANGE[1] - _STATUS_RANGE[0] + 2                # + "other"
_SLOTS = _REFUSED + _STATUS_SLOTS
_BLOCK = struct.Struct("<%dQ" % _SLOTS)
_ONE = struct.Struct("<Q")
_READ_ATTEMPTS = 100


def _close_slot(code: Optional[int]) -> int:
    offset = 0
    for low, high in _CLOSE_RANGES:
        if code is not None and low <= code <= high:
            return _CLOSED + offset + code - low
        offset += high - low + 1
    return _CLOSED + offset


def _close_label(index: int) -> str:
    for low, high in _CLOSE_RANGES:
        if index <= high - low:
            return str(low + index)
        index -= high - low + 1
    return "other"


def _status_slot(status: int) -> int:
    low, high = _STATUS_RANGE
    return _REFUSED + (status - low if low <= status <= high else high - low + 1)


def _status_label(index: int) -> str:
    low, high = _STATUS_RANGE
    return str(low + index) if index <= high - low else "other"


class MetricsStore:
    """Counters for ``workers`` processes (1 without ``--workers``).

    Create it before forking; each worker calls :meth:`use_slot` with its
    index first.  The ``record_*`` methods write the calling process's
    block; :meth:`exposition` reads all of them.
    """

    def __init__(self, workers: int = 1) -> None:
        self.workers = max(1, workers)
        self._memory = mmap.mmap(-1, _BLOCK.size * self.workers)
        self._slot = 0
        self._lock = threading.Lock()

    def use_slot(self, index: int) -> None:
        """This process is worker ``index``: write there, and reset its gauges.

        A worker restarted after a crash keeps its predecessor's counters,
        but the sessions and handshakes that process had open are gone.
        """
        self._slot = index
        self._update({}, (_OPEN, _PENDING))

    # -- writing (the calling process's own block) ------------------------------------

    def _update(self, add: Dict[int, int], reset: Sequence[int] = ()) -> None:
        """Add each value to its slot and set the ``reset`` slots to 0, inside the sequence."""
        base = self._slot * _BLOCK.size
        with self._lock:
            seq = _ONE.unpack_from(self._memory, base)[0]
            seq |= 1  # odd while writing (also after a predecessor died mid-write)
            _ONE.pack_into(self._memory, base, seq)
            for index in reset:
                _ONE.pack_into(self._memory, base + index * _ONE.size, 0)
            for index, delta in add.items():
                offset = base + index * _ONE.size
                value = _ONE.unpack_from(self._memory, offset)[0] + delta
                _ONE.pack_into(self._memory, offset, max(0, value))
            _ONE.pack_into(self._memory, base, seq + 1)

    def record_opened(self) -> None:
        """A session started relaying."""
        self._update({_OPENED: 1, _OPEN: 1})

    def record_closed(self, close_code: Optional[int], duration: float,
                      bytes_from_client: int, bytes_to_client: int) -> None:
        """A session ended: its close code, length in seconds and payload bytes each way."""
        changes = {_OPEN: -1, _FROM_CLIENT: bytes_from_client, _TO_CLIENT: bytes_to_client,
                   _DURATION_US: int(round(max(0.0, duration) * 1e6)), _DURATION_COUNT: 1,
                   _close_slot(close_code): 1}
        for index, bound in enumerate(DURATION_BUCKETS):
            if duration <= bound:
                changes[_BUCKETS + index] = 1
                break
        self._update(changes)

    def record_refused(self, status: int) -> None:
        """A handshake was answered with HTTP ``status``."""
        self._update({_status_slot(status): 1})

    def set_pending(self, count: int) -> None:
        """``count`` connections are in the handshake phase now."""
        self._update({_PENDING: count}, (_PENDING,))

    # -- reading -------------------------------------------------------------------------

    def snapshot(self, worker: int) -> Tuple[int, ...]:
        """A consistent copy of worker ``worker``'s block."""
        base = worker * _BLOCK.size
        values = _BLOCK.unpack_from(self._memory, base)
        for _attempt in range(_READ_ATTEMPTS):
            if values[_SEQ] % 2 == 0 and _ONE.unpack_from(self._memory, base)[0] == values[_SEQ]:
                break
            values = _BLOCK.unpack_from(self._memory, base)
        return values

    def exposition(self) -> bytes:
        """Every worker's counters as Prometheus text exposition format 0.0.4."""
        blocks = [self.snapshot(worker) for worker in range(self.workers)]
        labelled = self.workers > 1
        return render(blocks, labelled).encode("utf-8")

    def close(self) -> None:
        self._memory.close()


# -- the text format -------------------------------------------------------------------


def _labels(pairs: Sequence[Tuple[str, str]]) -> str:
    if not pairs:
        return ""
    return "{%s}" % ",".join('%s="%s"' % pair for pair in pairs)


def _number(value: float) -> str:
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


def render(blocks: Sequence[Sequence[int]], labelled: bool) -> str:
    """The exposition text for ``blocks`` (one per worker; labelled ``worker`` when ``labelled``)."""
    lines: List[str] = []

    def family(name: str, kind: str, text: str) -> None:
        lines.append("# HELP %s %s" % (name, text))
        lines.append("# TYPE %s %s" % (name, kind))

    def sample(name: str, worker: int, value: float, *pairs: Tuple[str, str]) -> None:
        labels = ((("worker", str(worker)),) if labelled else ()) + pairs
        lines.append("%s%s %s" % (name, _labels(labels), _number(value)))

    def one_each(name: str, kind: str, text: str, slot: int) -> None:
        family(name, kind, text)
        for worker, block in enumerate(blocks):
            sample(name, worker, block[slot])

    def by_slot(name: str, first: int, count: int, label: str, label_of) -> None:
        # One sample per slot that counted anything, labelled with what the slot stands for.
        for worker, block in enumerate(blocks):
            for index in range(count):
                if block[first + index]:
                    sample(name, worker, block[first + index], (label, label_of(index)))

    one_each("wsproxy_sessions_opened_total", "counter",
             "WebSocket sessions that started relaying.", _OPENED)
    family("wsproxy_sessions_closed_total", "counter",
           "Sessions that ended, by WebSocket close code (1006: the connection just ended).")
    by_slot("wsproxy_sessions_closed_total", _CLOSED, _CLOSE_SLOTS, "code", _close_label)
    one_each("wsproxy_open_sessions", "gauge", "Sessions relaying now.", _OPEN)
    one_each("wsproxy_pending_handshakes", "gauge",
             "Connections accepted that have not finished their handshake.", _PENDING)
    family("wsproxy_handshake_failures_total", "counter",
           "Handshakes and HTTP requests refused, by the HTTP status answered.")
    by_slot("wsproxy_handshake_failures_total", _REFUSED, _STATUS_SLOTS, "status",
            _status_label)
    family("wsproxy_payload_bytes_total", "counter",
           "Payload bytes relayed by ended sessions, by direction.")
    for worker, block in enumerate(blocks):
        sample("wsproxy_payload_bytes_total", worker, block[_FROM_CLIENT],
               ("direction", "from_client"))
        sample("wsproxy_payload_bytes_total", worker, block[_TO_CLIENT],
               ("direction", "to_client"))
    family("wsproxy_session_duration_seconds", "histogram", "How long ended sessions lasted.")
    for worker, block in enumerate(blocks):
        cumulative = 0
        for index, bound in enumerate(DURATION_BUCKETS):
            cumulative += block[_BUCKETS + index]
            sample("wsproxy_session_duration_seconds_bucket", worker, cumulative,
                   ("le", _number(bound) if not float(bound).is_integer() else "%.1f" % bound))
        sample("wsproxy_session_duration_seconds_bucket", worker, block[_DURATION_COUNT],
               ("le", "+Inf"))
        sample("wsproxy_session_duration_seconds_sum", worker, block[_DURATION_US] / 1e6)
        sample("wsproxy_session_duration_seconds_count", worker, block[_DURATION_COUNT])
    return "\n".join(lines) + "\n"
