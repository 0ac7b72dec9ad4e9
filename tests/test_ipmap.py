"""vpopmail/ipmap.py: the IP map (``etc/ip_alias_map``) as the installed ``vipmap`` edits it,
and the domain a bare-name login gets (``default_domain``: ``$VPOPMAIL_DOMAIN``, the map entry
of the local address unless qmail serves that domain itself, ``users.default_domain``, then
``etc/defaultdomain``), read from a real install's files.
"""
from __future__ import annotations

import os
import stat
import subprocess

from install_site import Install
from vpopmail import config as vconfig
from vpopmail.ipmap import default_domain
from helpers import refused

DOMAIN = "example.com"
OTHER = "other.test"


def domain_for(inst: Install, local_ip: str = "", **environ: str) -> str:
    return default_domain(vconfig.load(str(inst.config_path)), environ, local_ip)


def test_vipmap_adds_prints_and_deletes(vhome: Install) -> None:
    vhome.ok("vadddomain", DOMAIN, "secret")
    vhome.ok("vadddomain", OTHER, "secret")
    path = vhome.prefix / "etc" / "ip_alias_map"
    assert vhome.ok("vipmap", "-p") == "" and not path.exists()
    assert vhome.ok("vipmap", "-a", "192.0.2.7", DOMAIN) == ""
    assert vhome.ok("vipmap", "-a", "2001:db8::7", OTHER.upper()) == ""  # stored lower case
    assert vhome.ok("vipmap", "-a", "192.0.2.7", DOMAIN) == ""  # the same pair: once, last
    assert path.read_text() == f"2001:db8::7 {OTHER}\n192.0.2.7 {DOMAIN}\n"
    # an address is kept as tcpserver spells TCPLOCALIP, which the map is matched against
    # (before, FD00:0:0::2 was kept so and never matched tcpserver's fd00::2)
    assert vhome.ok("vipmap", "-a", "FD00:0:0::2", DOMAIN) == ""
    assert path.read_text().endswith(f"fd00::2 {DOMAIN}\n")
    assert domain_for(vhome, "fd00::2") == DOMAIN
    assert vhome.ok("vipmap", "-d", "fd00:0::2", DOMAIN) == ""  # any spelling finds it
    path.write_text(path.read_text() + f"FD00::3 {DOMAIN}\n")  # an older entry, as given
    assert vhome.ok("vipmap", "-d", "fd00::3", DOMAIN) == ""
    assert vhome.ok("vipmap", "-a", "::ffff:192.0.2.9", DOMAIN) == ""  # found as IPv4
    assert domain_for(vhome, "::ffff:192.0.2.9") == domain_for(vhome, "192.0.2.9") == DOMAIN
    assert vhome.ok("vipmap", "-d", "192.0.2.9", DOMAIN) == ""
    assert path.read_text() == f"2001:db8::7 {OTHER}\n192.0.2.7 {DOMAIN}\n"
    st = os.stat(path)
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o644, vhome.uid, vhome.gid)
    assert vhome.ok("vipmap", "-p") == f"2001:db8::7 {OTHER}\n192.0.2.7 {DOMAIN}\n"
    assert vhome.ok("vipmap", "-d", "2001:db8::7", OTHER) == ""
    assert vhome.ok("vipmap", "-p") == f"192.0.2.7 {DOMAIN}\n"
    assert not [name for name in os.listdir(path.parent) if "tmp" in name]


def test_vdeldomain_takes_the_domains_lines_out_of_the_map(vhome: Install) -> None:
    """The map's lines for a deleted domain and its alias domains go with them, the others
    stay (before: they stayed, and steered bare-name logins to the domain once it was added
    anew); an alias domain deleted alone takes only its own."""
    vhome.ok("vadddomain", DOMAIN, "secret")
    vhome.ok("vadddomain", OTHER, "secret")
    vhome.ok("vaddaliasdomain", DOMAIN, "alias.test")
    vhome.ok("vaddaliasdomain", DOMAIN, "alias2.test")
    for ip, domain in (("192.0.2.7", DOMAIN), ("192.0.2.8", OTHER), ("192.0.2.9", "alias.test"),
                       ("192.0.2.10", "alias2.test")):
        vhome.ok("vipmap", "-a", ip, domain)
    vhome.ok("vdeldomain", "alias2.test")
    assert vhome.ok("vipmap", "-p") == (f"192.0.2.7 {DOMAIN}\n192.0.2.8 {OTHER}\n"
                                        "192.0.2.9 alias.test\n")
    vhome.ok("vdeldomain", "-f", DOMAIN)
    assert vhome.ok("vipmap", "-p") == f"192.0.2.8 {OTHER}\n"


def test_vdeldomain_that_may_not_write_the_map_changes_nothing(root_vhome: Install) -> None:
    """In a root install the map is root's: the vpopmail user's vdeldomain of a domain the
    map names stops before anything is removed, naming the fix; root's then deletes it."""
    root_vhome.ok("vadddomain", DOMAIN, "secret")
    root_vhome.ok("vipmap", "-a", "192.0.2.7", DOMAIN)
    refused = root_vhome.run("vdeldomain", DOMAIN, as_user="vpopmail")
    assert refused.returncode != 0 and "run vdeldomain as root" in refused.stdout, refused
    assert root_vhome.ok("vdominfo", "-n", DOMAIN).strip() == DOMAIN
    root_vhome.ok("vdeldomain", DOMAIN)
    assert root_vhome.ok("vipmap", "-p") == ""


def test_vipmap_of_a_root_install_writes_roots_map(root_vhome: Install) -> None:
    """The map decides the domain of bare-name logins, which root's vchkpw serves: in a root
    install it is root's, and the vpopmail user (uid 89) can neither rewrite nor replace it."""
    etc = root_vhome.prefix / "etc"
    st = os.stat(etc / "ip_alias_map.lock")  # made by the install: not the vpopmail user's
    assert (st.st_uid, st.st_mode & 0o777) == (0, 0o600)  # to make, hold or open
    root_vhome.ok("vadddomain", DOMAIN, "secret")
    root_vhome.ok("vipmap", "-a", "192.0.2.7", DOMAIN)
    for name in ("ip_alias_map", "ip_alias_map.lock"):
        st = os.stat(etc / name)
        assert (st.st_uid, st.st_gid) == (0, 0), name
    attack = subprocess.run(
        ["setpriv", "--reuid=89", "--regid=89", "--clear-groups", "/bin/sh", "-c",
         'echo "192.0.2.7 evil.test" >> "$1/ip_alias_map" || '
         '{ echo "192.0.2.7 evil.test" > "$1/new" && mv -f "$1/new" "$1/ip_alias_map"; }',
         "sh", str(etc)], capture_output=True, text=True)
    assert attack.returncode != 0, attack
    assert root_vhome.ok("vipmap", "-p") == f"192.0.2.7 {DOMAIN}\n"


def test_vipmap_refuses_and_changes_nothing(vhome: Install) -> None:
    vhome.ok("vadddomain", DOMAIN, "secret")
    vhome.ok("vipmap", "-a", "192.0.2.7", DOMAIN)
    refused(vhome, "vipmap", "-a", "192.0.2.8", "nosuch.test", code=245,
            starts="Error: Domain does not exist: nosuch.test")
    for ip in ("192.0.2.300", "fe80::1%eth0", "192.0.2.7 ", "host.example.com", ""):
        refused(vhome, "vipmap", "-a", ip, DOMAIN, code=152, starts="Error: bad input: ")
    refused(vhome, "vipmap", "-d", "192.0.2.9", DOMAIN, code=152,
            starts=f"Error: bad input: no mapping 192.0.2.9 {DOMAIN}")
    assert (vhome.prefix / "etc" / "ip_alias_map").read_text() == f"192.0.2.7 {DOMAIN}\n"
    # without -a or -d, an ip and a domain are not taken for printing the map (before: the
    # map printed, exit 0, as if the line had been added)
    for args in ([], ["-a", "192.0.2.8"], ["-d", "192.0.2.7", DOMAIN, "x"], ["-x"],
                 ["192.0.2.8", DOMAIN], ["-p", "192.0.2.8"]):
        result = vhome.run("vipmap", *args)
        assert result.returncode == 255 and result.stdout.startswith("vipmap: usage:"), args


def test_default_domain_order(vhome: Install) -> None:
    vhome.ok("vadddomain", DOMAIN, "secret")
    vhome.ok("vadddomain", OTHER, "secret")
    vhome.ok("vipmap", "-a", "192.0.2.7", OTHER)
    etc = vhome.prefix / "etc"
    # nothing configured: no domain
    assert domain_for(vhome, "192.0.2.8") == ""
    # etc/defaultdomain (its first line), then users.default_domain over it
    (etc / "defaultdomain").write_text("Fallback.TEST\nignored.test\n")
    assert domain_for(vhome, "192.0.2.8") == "fallback.test"
    vhome.set_config("users", "default_domain", "Example.COM")
    assert domain_for(vhome, "192.0.2.8") == DOMAIN
    assert domain_for(vhome) == DOMAIN
    # the map entry of the local address, also as an IPv4-mapped IPv6 address
    assert domain_for(vhome, "192.0.2.7") == OTHER
    assert domain_for(vhome, "::FFFF:192.0.2.7") == OTHER
    # $VPOPMAIL_DOMAIN over everything, unsafe characters made harmless
    assert domain_for(vhome, "192.0.2.7", VPOPMAIL_DOMAIN="Env.Test") == "env.test"
    assert domain_for(vhome, "", VPOPMAIL_DOMAIN="../x y") == ".._x_y"
    assert len(domain_for(vhome, "", VPOPMAIL_DOMAIN="a" * 200)) == 96


def test_a_mapped_domain_qmail_serves_as_local_is_not_used(vhome: Install) -> None:
    vhome.ok("vadddomain", DOMAIN, "secret")
    vhome.ok("vadddomain", OTHER, "secret")
    vhome.ok("vipmap", "-a", "192.0.2.7", OTHER)
    vhome.set_config("users", "default_domain", DOMAIN)
    (vhome.qmaildir / "control" / "locals").write_text(f"localhost\n{OTHER.upper()}\n")
    assert domain_for(vhome, "192.0.2.7") == DOMAIN


def test_root_ignores_a_map_or_default_domain_the_vpopmail_user_planted(
        root_vhome: Install) -> None:
    """In a root install without a map or etc/defaultdomain, uid 89 may add files to etc/:
    the map it makes there, and a FIFO or a link to /dev/zero as etc/defaultdomain, are not
    read by root (before: root's bare-name logins got uid 89's domain, and vchkpw waited for
    ever on the FIFO, or read /dev/zero until memory ran out); root's own map is."""
    import sys

    root_vhome.ok("vadddomain", DOMAIN, "secret")
    etc = root_vhome.prefix / "etc"
    probe = ("import sys; from vpopmail import config; from vpopmail.ipmap import "
             "default_domain; print(default_domain(config.load(sys.argv[1]), {}, sys.argv[2]))")

    def root_domain(local_ip: str) -> str:
        done = subprocess.run([sys.executable, "-c", probe, str(root_vhome.config_path),
                               local_ip], capture_output=True, text=True, timeout=20)
        assert done.returncode == 0, done
        return done.stdout.strip()

    for plant in ('echo "192.0.2.7 evil.test" > "$1/ip_alias_map" && mkfifo "$1/defaultdomain"',
                  'rm -f "$1/ip_alias_map" "$1/defaultdomain" && '
                  'ln -s /dev/zero "$1/ip_alias_map" && ln -s /dev/zero "$1/defaultdomain"'):
        planted = subprocess.run(["setpriv", "--reuid=89", "--regid=89", "--clear-groups",
                                  "/bin/sh", "-c", plant, "sh", str(etc)],
                                 capture_output=True, text=True)
        assert planted.returncode == 0, planted
        assert root_domain("192.0.2.7") == ""
    for name in ("ip_alias_map", "defaultdomain"):
        (etc / name).unlink()
    root_vhome.ok("vipmap", "-a", "192.0.2.7", DOMAIN)
    assert root_domain("192.0.2.7") == DOMAIN
