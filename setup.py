"""Install wsproxy: ``python3 -m pip install .`` gives the ``wsproxy`` command."""

import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(r'__version__ = "([^"]+)"', (HERE / "wsproxy" / "__init__.py").read_text()).group(1)

setup(
    name="wsproxy",
    version=VERSION,
    description="WebSockets-to-TCP proxy in pure Python (standard library only)",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["wsproxy", "wsproxy.*"]),
    python_requires=">=3.9",
    install_requires=[],
    entry_points={"console_scripts": ["wsproxy = wsproxy.cli:main",
                                      "wsproxy-websockify = wsproxy.websockify:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Internet :: Proxy Servers",
    ],
)
