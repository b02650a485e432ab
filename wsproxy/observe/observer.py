"""The one home of the counters: every session record goes through :class:`Observer`.

The server tells the observer when a session starts, when it ends (its
:class:`~wsproxy.session.SessionInfo` then holds the final numbers, written
once) and when a handshake is refused; the observer hands the same record
to the status tally, the Prometheus counters and the audit log.
"""

import logging
from typing import Any, Dict, Iterable, Optional

from ..session import format_address
from ..settings import ConfigError, Settings
from .audit import AuditLog, rfc3339_now, token_field
from .metrics import MetricsStore
from .status import LiveCounts, StatusTally

logger = logging.getLogger("wsproxy")


class Observer:
    """Status counts, metrics and the audit log of one server (and its workers).

    Built by the server before any fork: the metrics memory and the audit
    file are shared with the ``--workers``.  Raises :class:`ConfigError`
    naming ``--audit-log`` when that file cannot be opened, or ``--metrics``
    when its path is the status page's.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        if settings.metrics and settings.metrics == settings.status:
            raise ConfigError("metrics: %s is already the --status page; give another path"
                              % settings.metrics)
        self.status = StatusTally()
        self.metrics = MetricsStore(settings.workers)
        self.audit: Optional[AuditLog] = None
        if settings.audit_log:
            try:
                self.audit = AuditLog(settings.audit_log)
            except OSError as exc:
                raise ConfigError("audit-log: cannot open %s: %s"
                                  % (settings.audit_log, exc.strerror or exc)) from None

    # -- the session records -------------------------------------------------------

    def session_started(self, session) -> None:
        """``session`` (a SessionInfo) started relaying."""
        self.status.session_started(str(session.target))
        self.metrics.record_opened()
        self._audit("start", session)

    def session_leaving(self, session) -> None:
        """``session`` is leaving the server's set of open sessions: fold its bytes in.

        Called under the lock that guards that set, so that the status page
        never sees the session in neither place; :meth:`session_ended`
        follows outside it.
        """
        self.status.session_ended(str(session.target), session.bytes_from_client,
                                  session.bytes_to_client)

    def session_ended(self, session) -> None:
        """``session`` ended; its byte counts, close code and duration are final."""
        self.metrics.record_closed(session.close_code, session.duration,
                                   session.bytes_from_client, session.bytes_to_client)
        self._audit("end", session)

    def handshake_refused(self, session, reason: str) -> None:
        """A request was answered with the HTTP error ``session.status``."""
        self.metrics.record_refused(session.status)
        self._audit("refused", session, reason)

    def pending_handshakes(self, count: int) -> None:
        """``count`` connections of this process are handshaking now."""
        self.metrics.set_pending(count)

    # -- the pages -----------------------------------------------------------------

    def status_document(self, live: Iterable[LiveCounts], open_count: int) -> bytes:
        """The ``--status`` JSON (see :class:`StatusTally`)."""
        return self.status.document(live, open_count)

    def metrics_document(self) -> bytes:
        """The ``--metrics`` text, every worker's counters."""
        return self.metrics.exposition()

    # -- files ---------------------------------------------------------------------

    def reopen(self) -> None:
        """SIGHUP: reopen the audit log (counters are kept)."""
        if self.audit is not None:
            self.audit.reopen()

    def close(self) -> None:
        if self.audit is not None:
            self.audit.close()

    def _audit(self, event: str, session, reason: Optional[str] = None) -> None:
        if self.audit is not None:
            self.audit.write(audit_record(event, session, self.settings.audit_hash_tokens, reason))


def _host_port(address: Any):
    if isinstance(address, tuple) and len(address) >= 2:
        return str(address[0]), (address[1] or None)
    return ("unix:" + address if address else "unix"), None


def audit_record(event: str, session, hash_tokens: bool,
                 reason: Optional[str] = None) -> Dict[str, Any]:
    """The audit log's object for ``event`` (``start``, ``end`` or ``refused``) of ``session``."""
    client, port = _host_port(session.client_address)
    record: Dict[str, Any] = {
        "time": rfc3339_now(),
        "event": event,
        "session": session.number,
        "client": client,
        "client_port": port,
        "via": None if session.via is None else format_address(session.via),
        "forwarded_for": list(session.forwarded_for),
        "tls_version": session.tls_version,
        "client_cert": session.client_cert,
        "user": session.user,
        "token": token_field(session.token, hash_tokens),
        "target": None if session.target is None else str(session.target),
        "protocol": session.protocol,
        "subprotocol": session.subprotocol,
        "compression": session.compression,
    }
    if event == "end":
        record.update({
            "bytes_from_client": session.bytes_from_client,
            "bytes_to_client": session.bytes_to_client,
            "duration": round(session.duration, 6),
            "close_code": session.close_code,
            "close_reason": session.close_reason,
        })
    elif event == "refused":
        record.update({"status": session.status, "reason": reason})
    return record
