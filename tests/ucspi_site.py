"""ucspi-tcp peers for tests: Debian's tcprules/tcpserver and the IPv6 build of both (Debian's
ucspi-tcp-ipv6, which conflicts with ucspi-tcp, unpacked under ``$UCSPI_TCP_IPV6_ROOT`` by
packaging/bootstrap), a tcpserver run on loopback and stopped by PID, and a client that reads
the environment tcpserver gives a connection."""
from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

ENV = {"PATH": "/usr/bin:/bin"}


def binary(directory: Path, name: str, why: str) -> Path:
    path = directory / name
    if not os.access(path, os.X_OK):
        pytest.skip(f"{path} not found ({why})")
    return path


@pytest.fixture(scope="module")
def plain() -> Path:
    """Debian's ucspi-tcp 0.88 bin directory."""
    binary(Path("/usr/bin"), "tcprules", "apt-get install ucspi-tcp")
    return Path("/usr/bin")


@pytest.fixture(scope="module")
def ipv6() -> Path:
    """Debian's ucspi-tcp-ipv6 bin directory, unpacked without installing (it conflicts)."""
    root = os.environ.get("UCSPI_TCP_IPV6_ROOT")
    why = "set UCSPI_TCP_IPV6_ROOT to a dpkg-deb -x of ucspi-tcp-ipv6"
    if not root:
        pytest.skip(why)
    binary(Path(root, "usr/bin"), "tcprules", why)
    return Path(root, "usr/bin")


@pytest.fixture
def loopback6() -> None:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback")


@contextmanager
def tcpserver(bindir: Path, cdb: Path, host: str, *flags: str) -> Iterator[int]:
    """``tcpserver -x cdb`` on ``host`` running env; yields its port (``-1`` prints it)."""
    server = subprocess.Popen([bindir / "tcpserver", "-1", "-RH", "-l", "localhost", *flags,
                               "-x", cdb, host, "0", "/usr/bin/env"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    try:
        port = server.stdout.readline()  # type: ignore[union-attr]
        if not port:
            server.wait(5)
            pytest.fail(f"tcpserver did not start: {server.stderr.read()!r}")  # type: ignore
        yield int(port)
    finally:
        server.terminate()
        try:
            server.wait(5)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def remote_env(source: str, server: str, port: int) -> dict[str, str]:
    """The environment tcpserver gives a connection from ``source``."""
    family = socket.AF_INET6 if ":" in source else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as client:
        client.settimeout(10)
        client.bind((source, 0))
        client.connect((server, port))
        data = b"".join(iter(lambda: client.recv(65536), b""))
    return dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)


