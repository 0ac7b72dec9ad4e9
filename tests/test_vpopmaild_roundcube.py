"""vpopmaild under tcpserver, spoken to by Roundcube's own password driver (Debian's
roundcube-plugins, plugins/password/drivers/vpopmaild.php, over php-net-socket): a password
change from webmail, checked afterwards through vchkpw, on both user backends."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from install_site import REPO, Install
from vpopmaild_site import DOMAIN, built_sites, site, vchkpw_accepts  # noqa: F401

pytestmark = pytest.mark.both_backends

DRIVER = "usr/share/roundcube/plugins/password/drivers/vpopmaild.php"
HARNESS = Path(__file__).with_name("roundcube_vpopmaild.php")


def driver() -> Path:
    """The driver from roundcube-plugins: unpacked by packaging/bootstrap, or installed."""
    for root in (REPO / ".peers" / "roundcube-plugins", Path("/")):
        if (root / DRIVER).is_file():
            return root / DRIVER
    pytest.skip("needs roundcube-plugins (packaging/bootstrap unpacks it into .peers/)")


@contextmanager
def tcpserver(inst: Install) -> Iterator[int]:
    """``tcpserver -HR 127.0.0.1 <port> bin/vpopmaild``, as the shipped run script does."""
    if not shutil.which("tcpserver"):
        pytest.skip("needs ucspi-tcp's tcpserver")
    server = subprocess.Popen(["tcpserver", "-1", "-HR", "127.0.0.1", "0",
                               str(inst.bin / "vpopmaild")], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, env={"PATH": "/usr/bin:/bin"})
    try:
        port = server.stdout.readline()  # type: ignore[union-attr]
        assert port, server.stderr.read()  # type: ignore[union-attr]
        yield int(port)
    finally:
        server.terminate()
        server.wait(10)


def roundcube(port: int, user: str, current: str, new: str) -> int:
    if not shutil.which("php"):
        pytest.skip("needs php-cli and php-net-socket")
    result = subprocess.run(["php", str(HARNESS), str(driver()), "127.0.0.1", str(port), user,
                             current, new], capture_output=True, text=True, timeout=60,
                            env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 0 and result.stderr == "", result
    return int(result.stdout.strip().splitlines()[-1])


def test_roundcube_changes_a_password_through_vpopmaild(site: Install) -> None:
    user = f"alice@{DOMAIN}"
    with tcpserver(site) as port:
        assert roundcube(port, user, "wrong", "stolen") == 2  # PASSWORD_ERROR
        assert vchkpw_accepts(site, user, "pw1") and not vchkpw_accepts(site, user, "stolen")
        assert roundcube(port, user, "pw1", "N3w pass") == 0  # PASSWORD_SUCCESS
        assert vchkpw_accepts(site, user, "N3w pass")
        assert not vchkpw_accepts(site, user, "pw1")
        assert roundcube(port, f"nobody@{DOMAIN}", "pw1", "x") == 2
    assert roundcube(port, user, "N3w pass", "x") == 3  # server gone: PASSWORD_CONNECT_ERROR


def test_a_plain_socket_session_under_tcpserver(site: Install) -> None:
    with tcpserver(site) as port, socket.create_connection(("127.0.0.1", port), 10) as conn:
        conn.sendall(f"slogin bob@{DOMAIN} pw2\r\nhelp\r\nquit\r\n".encode())
        data = b"".join(iter(lambda: conn.recv(65536), b""))
    lines = data.decode().split("\r\n")
    assert lines[:3] == ["+OK ", "+OK ", "+OK+"] and lines[-3:] == [".", "+OK ", ""]
    assert os.path.exists(site.bin / "vpopmaild")
