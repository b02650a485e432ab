"""Debian's noVNC launcher (``novnc_proxy``) runs wsproxy-websockify as its ``websockify``.

The launcher looks for a ``websockify`` command on ``PATH``, starts it in
the background with ``--web``, checks after a second that it is still
running and only then prints the URL to open.  A wsproxy that daemonised
by default, or refused the launcher's option order, would fail here.
"""

import os
import signal
import socket
import subprocess
import sys

import pytest

from conftest import EXIT_DEADLINE, ROOT, echo_round_trip, free_port, port_listens, wait_until

LAUNCHER = "/usr/share/novnc/utils/novnc_proxy"

#: What the launcher prints once its websockify survived the first second.
SUCCESS = "Navigate to this URL"


@pytest.fixture
def websockify_on_path(tmp_path):
    """A directory holding ``websockify`` -> ``python3 -m wsproxy.websockify``."""
    directory = tmp_path / "bin"
    directory.mkdir()
    script = directory / "websockify"
    script.write_text('#!/bin/sh\nexec "%s" -m wsproxy.websockify "$@"\n' % sys.executable)
    script.chmod(0o755)
    return directory


def test_novnc_launcher_starts_wsproxy_as_websockify(websockify_on_path, tmp_path, echo_target):
    if not os.access(LAUNCHER, os.X_OK):
        pytest.skip("%s is missing (apt-get install novnc)" % LAUNCHER)
    port = free_port()
    env = dict(os.environ)
    env["PATH"] = str(websockify_on_path) + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    output = tmp_path / "launcher.out"
    with open(str(output), "wb") as out:
        # --listen HOST:PORT keeps the socket on loopback; the launcher passes it on as is.
        launcher = subprocess.Popen(["bash", LAUNCHER, "--listen", "127.0.0.1:%d" % port,
                                     "--vnc", echo_target.address],
                                    cwd=str(tmp_path), env=env, stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    text = lambda: output.read_text(errors="replace")  # noqa: E731
    try:
        def launched():
            if launcher.poll() is not None:
                pytest.fail("the launcher exited with %s:\n%s" % (launcher.returncode, text()))
            return SUCCESS in text()
        wait_until(launched, EXIT_DEADLINE, lambda: "the launcher's URL line:\n" + text())
        assert "Using installed websockify at %s" % (websockify_on_path / "websockify") in text()
        assert "proxying from 127.0.0.1:%d" % port in text()
        echo_round_trip(port)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"GET /vnc.html HTTP/1.1\r\nHost: localhost\r\n\r\n")
            assert sock.recv(64).startswith(b"HTTP/1.1 200"), "noVNC's page from --web"
    finally:
        if launcher.poll() is None:
            launcher.send_signal(signal.SIGTERM)  # its trap stops websockify too
            try:
                launcher.wait(EXIT_DEADLINE)
            except subprocess.TimeoutExpired:
                os.killpg(launcher.pid, signal.SIGKILL)
                launcher.wait()
    wait_until(lambda: not port_listens(port), EXIT_DEADLINE,
               "the launcher's cleanup to stop wsproxy-websockify")
    assert "Traceback" not in text(), text()
