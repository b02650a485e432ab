"""The ``--status`` JSON document: totals and per-target counts of this process.

:class:`StatusTally` is fed the same session records as the metrics and the
audit log (:class:`~wsproxy.observe.Observer` calls it); it keeps what the
status page shows.  An ended session's bytes are folded in once, when it
ends; the page adds the live counts of the sessions still open, so a long
session's traffic shows while it runs.
"""

import json
import threading
import time
from typing import Dict, Iterable, Tuple

#: ``(target key, bytes_from_client, bytes_to_client)`` of one open session.
LiveCounts = Tuple[str, int, int]

_BYTE_FIELDS = ("bytes_from_client", "bytes_to_client")


class StatusTally:
    """Session and byte totals, overall and by target (``str(target)``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._totals = {"sessions": 0, "bytes_from_client": 0, "bytes_to_client": 0}
        self._by_target: Dict[str, Dict[str, int]] = {}
        self._started_monotonic = time.monotonic()

    def session_started(self, target_key: str) -> None:
        """A session to ``target_key`` started relaying."""
        with self._lock:
            self._totals["sessions"] += 1
            entry = self._by_target.setdefault(target_key, {
                "sessions": 0, "open": 0, "bytes_from_client": 0, "bytes_to_client": 0})
            entry["sessions"] += 1
            entry["open"] += 1

    def session_ended(self, target_key: str, bytes_from_client: int, bytes_to_client: int) -> None:
        """A session to ``target_key`` ended with these final byte counts."""
        with self._lock:
            entry = self._by_target[target_key]
            entry["open"] -= 1
            for name, count in zip(_BYTE_FIELDS, (bytes_from_client, bytes_to_client)):
                entry[name] += count
                self._totals[name] += count

    def document(self, live: Iterable[LiveCounts], open_count: int) -> bytes:
        """The JSON page: uptime, open sessions, totals and per-target counts.

        ``live`` lists the open sessions' counts so far (not yet folded in);
        ``open_count`` is how many sessions are relaying now.
        """
        with self._lock:
            totals = dict(self._totals)
            by_target = {key: dict(value) for key, value in self._by_target.items()}
        for key, from_client, to_client in live:
            entry = by_target.get(key)
            for name, count in zip(_BYTE_FIELDS, (from_client, to_client)):
                if entry is not None:
                    entry[name] += count
                totals[name] += count
        document = {
            "uptime": round(time.monotonic() - self._started_monotonic, 3),
            "open_sessions": open_count,
            "total_sessions": totals["sessions"],
            "bytes_from_client": totals["bytes_from_client"],
            "bytes_to_client": totals["bytes_to_client"],
            "targets": by_target,
        }
        return (json.dumps(document, indent=2, sort_keys=True) + "\n").encode("utf-8")
