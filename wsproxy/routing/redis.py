"""Token plugin ``TokenRedis``: each token is a key in a Redis database.

The source is ``host[:port[:db[:password[:namespace]]]]`` (an empty field
keeps its default: port 6379, database 0, no password, no namespace); a
field in double quotes may hold ``:`` (``"::1":6379``, ``h::::"a:b"``).
With a namespace the key is ``namespace:token``.  The value is JSON
``{"host": "host:port"}`` or plain ``host:port``.

Each lookup opens one connection and speaks just enough RESP (the Redis
serialization protocol, version 2) for ``AUTH``, ``SELECT`` and ``GET``,
all within :data:`~wsproxy.routing.base.LOOKUP_TIMEOUT`.
"""

import json
import re
import time
from typing import List, Optional, Union

from wsproxy.plugins import parse_source_args
from wsproxy.settings import ConfigError

from . import net
from .base import LOOKUP_TIMEOUT, MAX_ANSWER, BuiltinPlugin, TokenLookupError, to_target

DEFAULT_PORT = 6379

Reply = Union[None, int, bytes, str, List]


class RedisError(Exception):
    """Redis answered with an error reply (``-ERR ...``)."""


def encode_command(*words: Union[str, bytes]) -> bytes:
    """A command as a RESP array of bulk strings."""
    out = [b"*%d\r\n" % len(words)]
    for word in words:
        data = word.encode("utf-8") if isinstance(word, str) else word
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class ReplyReader:
    """Reads RESP replies from a socket before a deadline, at most ``limit`` bytes each."""

    def __init__(self, sock, deadline: float, limit: int = MAX_ANSWER) -> None:
        self.sock = sock
        self.deadline = deadline
        self.limit = limit
        self.buffer = bytearray()

    def _more(self) -> None:
        chunk = net.recv_some(self.sock, self.deadline)
        if not chunk:
            raise ConnectionError("Redis closed the connection")
        self.buffer += chunk

    def _line(self) -> bytes:
        while True:
            end = self.buffer.find(b"\r\n")
            if end >= 0:
                line = bytes(self.buffer[:end])
                del self.buffer[:end + 2]
                return line
            if len(self.buffer) > self.limit:
                raise ValueError("Redis reply line longer than %d bytes" % self.limit)
            self._more()

    def read(self) -> Reply:
        """One reply: a str (+), int (:), bytes or None ($), list (*); RedisError for -."""
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode("utf-8", "replace")
        if kind == b"-":
            raise RedisError(rest.decode("utf-8", "replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            length = int(rest)
            if length < 0:
                return None
            if length > self.limit:
                raise ValueError("Redis value longer than %d bytes" % self.limit)
            while len(self.buffer) < length + 2:
                self._more()
            value = bytes(self.buffer[:length])
            del self.buffer[:length + 2]
            return value
        if kind == b"*":
            count = int(rest)
            if count > 1024:
                raise ValueError("Redis array too long")
            return None if count < 0 else [self.read() for _ in range(count)]
        raise ValueError("not a RESP reply: %r" % line[:40])


class TokenRedis(BuiltinPlugin):
    """Tokens as Redis keys: ``GET [namespace:]token`` gives ``host:port`` or JSON.

    Raises :class:`ConfigError` naming ``token-source`` for a source not in
    the form ``host[:port[:db[:password[:namespace]]]]``.
    """

    name = "TokenRedis"
    timeout = LOOKUP_TIMEOUT

    def __init__(self, src: Optional[str]) -> None:
        super().__init__(src)
        fields = parse_source_args(src or "")
        if not src or not fields[0] or len(fields) > 5:
            raise ConfigError("token-source: TokenRedis expects "
                              "host[:port[:db[:password[:namespace]]]]")
        fields += [""] * (5 - len(fields))
        host, port, db, password, namespace = fields
        try:
            self.port = int(port) if port else DEFAULT_PORT
            self.db = int(db) if db else 0
            if not 0 < self.port <= 65535 or self.db < 0:
                raise ValueError
        except ValueError:
            raise ConfigError("token-source: TokenRedis expects "
                              "host[:port[:db[:password[:namespace]]]] with a port 1-65535 and "
                              "a database number") from None
        self.host = host
        self.password = password or None
        self.namespace = namespace + ":" if namespace else ""
        #: Where, for log lines (never the password).
        self.where = "redis %s:%d/%d" % (host, self.port, self.db)

    def lookup(self, token: str):
        value = self._get(self.namespace + token)
        if value is None:
            return None
        try:
            text = value.decode("utf-8").strip()
            if text.startswith("{"):
                host, port = json.loads(text)["host"].split(":")
            elif re.match(r"\S+:\S+", text):
                host, port = text.split(":")
            else:
                raise ValueError
            return to_target(host, port)
        except (ValueError, KeyError, TypeError, AttributeError):
            raise TokenLookupError('%s: the value of a token is %r; expected host:port or '
                                   '{"host": "host:port"}' % (self.where, value[:200])) from None

    def _get(self, key: str) -> Optional[bytes]:
        deadline = time.monotonic() + self.timeout
        commands = []
        if self.password is not None:
            commands.append(encode_command("AUTH", self.password))
        if self.db:
            commands.append(encode_command("SELECT", str(self.db)))
        commands.append(encode_command("GET", key))
        try:
            sock = net.connect(self.host, self.port, deadline)
        except net.DeadlinePassed:
            raise TokenLookupError("%s: no connection in %g s" % (self.where, self.timeout)) \
                from None
        except OSError as exc:
            raise TokenLookupError("%s unreachable: %s" % (self.where, exc.strerror or exc)) \
                from None
        try:
            sock.settimeout(net.left(deadline))
            sock.sendall(b"".join(commands))  # pipelined: one round trip
            reader = ReplyReader(sock, deadline)
            replies = [self._reply(reader) for _ in commands]
        except net.DeadlinePassed:
            raise TokenLookupError("%s: no answer in %g s" % (self.where, self.timeout)) from None
        except (OSError, ValueError) as exc:
            raise TokenLookupError("%s failed: %s" % (self.where, exc)) from None
        finally:
            sock.close()
        value = replies[-1]
        if value is not None and not isinstance(value, bytes):
            raise TokenLookupError("%s: GET answered %r" % (self.where, value))
        return value

    def _reply(self, reader: ReplyReader) -> Reply:
        try:
            return reader.read()
        except RedisError as exc:
            # Redis answers AUTH with "WRONGPASS ..." or "ERR ...": no secret in it.
            raise TokenLookupError("%s answered an error: %s" % (self.where, exc)) from None
