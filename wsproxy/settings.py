"""The one settings object: every option wsproxy has, with its default.

The command line, the config file and embedders all build a :class:`Settings`;
nothing else in wsproxy reads ``sys.argv`` or the environment.  This module
opens no sockets.
"""

import dataclasses
from dataclasses import dataclass, field
from typing import List, Optional

#: RFC 6455 limits we apply by default (bounded memory per session).
DEFAULT_MAX_HEADER_SIZE = 16 * 1024
DEFAULT_MAX_MESSAGE_SIZE = 1024 * 1024
DEFAULT_HANDSHAKE_TIMEOUT = 10.0
#: A peer that has accepted no byte for this long is gone (``--write-timeout``).
DEFAULT_WRITE_TIMEOUT = 300.0


class ConfigError(ValueError):
    """A bad option value; the message names the option and what was expected."""


@dataclass
class Settings:
    """Every wsproxy option.  Build one and hand it to :class:`ProxyServer`.

    Field names are the long command-line option names with ``-`` replaced
    by ``_``; ``listen_*`` and ``target_*`` hold the two positional arguments.
    """

    # -- listening -----------------------------------------------------------
    listen_host: str = ""
    listen_port: int = 0
    unix_listen: Optional[str] = None
    unix_listen_mode: int = 0o600
    proxy_protocol: bool = False
    inetd: bool = False

    # -- target ----------------------------------------------------------------
    target_host: Optional[str] = None
    target_port: Optional[int] = None
    unix_target: Optional[str] = None
    ssl_target: bool = False
    target_cafile: Optional[str] = None
    target_insecure: bool = False
    token_source: Optional[str] = None
    host_token: bool = False
    # websockify's plugins: a built-in name or a dotted path module.Class
    token_plugin: Optional[str] = None
    auth_plugin: Optional[str] = None
    auth_source: Optional[str] = None
    #: ``"v1"`` or ``"v2"``: send the target a PROXY protocol header naming the client.
    target_proxy_protocol: Optional[str] = None

    # -- TLS -------------------------------------------------------------------
    cert: Optional[str] = None
    key: Optional[str] = None
    ssl_only: bool = False
    ssl_ciphers: Optional[str] = None
    ssl_version: str = "tlsv1_2"
    verify_client: bool = False
    cafile: Optional[str] = None

    # -- seed features -----------------------------------------------------------
    flash_policy: bool = True
    flash_policy_domain: str = "*"
    flash_policy_ports: str = "*"
    record: Optional[str] = None

    # -- web root and access control -------------------------------------------
    web: Optional[str] = None
    web_listing: bool = False
    origin: List[str] = field(default_factory=list)
    auth_file: Optional[str] = None
    web_auth: bool = False
    trusted_proxy: List[str] = field(default_factory=list)
    status: Optional[str] = None

    # -- limits and timeouts ---------------------------------------------------
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT
    session_timeout: float = 0.0
    heartbeat: float = 0.0
    max_connections: int = 0
    max_connections_per_ip: int = 0
    write_timeout: float = DEFAULT_WRITE_TIMEOUT
    max_header_size: int = DEFAULT_MAX_HEADER_SIZE
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE

    # -- compression (RFC 7692 permessage-deflate) ----------------------------------
    compress: bool = False
    compress_level: int = 6
    compress_window_bits: int = 15
    timeout: float = 0.0
    idle_timeout: float = 0.0

    # -- process ---------------------------------------------------------------
    foreground: bool = False
    pid_file: Optional[str] = None
    verbose: bool = False
    quiet: bool = False
    log_file: Optional[str] = None
    syslog: Optional[str] = None
    workers: int = 1
    user: Optional[str] = None
    group: Optional[str] = None

    # -- metrics and audit (wsproxy.observe) ------------------------------------
    metrics: Optional[str] = None
    metrics_allow: List[str] = field(default_factory=list)
    audit_log: Optional[str] = None
    audit_hash_tokens: bool = False

    # -- websockify compatibility (wsproxy-websockify maps its options here) ------
    key_password: Optional[str] = None
    prefer_ipv6: bool = False
    run_once: bool = False
    traffic: bool = False
    legacy_syslog: bool = False
    #: Target unreachable: answer 101, then close 1011 with a reason (not 502).
    close_unreachable: bool = False
    #: ``-- COMMAND ...``: run it on a free loopback port and relay to it.
    wrap_command: List[str] = field(default_factory=list)
    wrap_mode: str = "exit"

    def replace(self, **changes) -> "Settings":
        """Return a copy with ``changes`` applied (the original is untouched)."""
        return dataclasses.replace(self, **changes)
