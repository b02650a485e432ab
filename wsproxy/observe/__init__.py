"""What wsproxy tells its operators: the status page, Prometheus metrics, the audit log.

All three read the same session records, handed to one :class:`Observer`
when a session starts, when it ends and when a handshake is refused.
"""

from .audit import AuditLog
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE, MetricsStore
from .observer import Observer, audit_record
from .status import StatusTally

__all__ = ["AuditLog", "METRICS_CONTENT_TYPE", "MetricsStore", "Observer", "StatusTally",
           "audit_record"]
