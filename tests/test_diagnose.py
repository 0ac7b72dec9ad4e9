"""vpopmail.api.diagnose, the library under vcheck, on a real sandbox install: the steps come in
their documented order, the walk stops at the first fault (its number and fix) however many
later steps are broken too, an alias or forward ends it successfully at step 8, and a file
system error the checks do not expect is still a step's fault with a fix, not an exception.
(Each check's own faults through the installed vcheck: test_toolbox_tools.py.)"""
from __future__ import annotations

import os
import shutil

from helpers import DOMAIN, site
from install_site import Install
from vpopmail.api.diagnose import Step, diagnose

ORDER = ["address", "users/assign", "users/cdb", "qmail control", "domain directory",
         ".qmail-default", "vpasswd", "user", "Maildir", "maildirsize", "flags",
         "vpopmail-server", "installation"]


def walk(inst: Install, address: str = f"alice@{DOMAIN}") -> list[Step]:
    api = inst.api()
    try:
        return list(diagnose(api, address))
    finally:
        api.backend.close()


def test_a_healthy_address_passes_every_step_in_order(vhome: Install) -> None:
    site(vhome)
    steps = walk(vhome)
    assert [(s.number, s.name) for s in steps] == list(enumerate(ORDER, 1))
    assert all(s.ok and not s.final and not s.fix and s.text for s in steps)


def test_the_first_fault_stops_the_walk(vhome: Install) -> None:
    """Broken at steps 4, 6 and 9 at once: the walk ends at 4, with its number and fix."""
    dom = site(vhome)
    control = vhome.qmaildir / "control" / "virtualdomains"
    control.write_text("")
    (dom / ".qmail-default").unlink()
    shutil.rmtree(dom / "alice" / "Maildir")
    steps = walk(vhome)
    assert [s.number for s in steps] == [1, 2, 3, 4]
    assert all(s.ok for s in steps[:3])
    last = steps[-1]
    assert (last.name, last.ok, last.final) == ("qmail control", False, False)
    assert "not in control/virtualdomains" in last.text and last.fix
    control.write_text(f"{DOMAIN}:{DOMAIN}\n")  # fixed: the walk goes on to the next fault
    assert [(s.number, s.ok) for s in walk(vhome)][-3:] == [(4, True), (5, True), (6, False)]


def test_an_alias_ends_the_walk_successfully_at_the_user_step(vhome: Install) -> None:
    dom = site(vhome)
    (dom / ".qmail-info").write_text("&alice@example.com\n")
    steps = walk(vhome, f"info@{DOMAIN}")
    assert [s.number for s in steps] == list(range(1, 9))
    assert all(s.ok for s in steps)
    assert steps[-1].final and "takes its mail" in steps[-1].text
    assert [s.final for s in steps[:-1]] == [False] * 7
    steps = walk(vhome, f"nobody@{DOMAIN}")  # no alias: a fault, with the command to add one
    assert (steps[-1].number, steps[-1].ok) == (8, False)
    assert steps[-1].fix == f"vadduser nobody@{DOMAIN}"


def test_an_unexpected_file_system_error_is_a_fault_with_a_fix(vhome: Install) -> None:
    """The domain directory a symbolic link to itself (ELOOP): step 5 fails with the error and
    the generic fix; nothing is raised and no later step runs."""
    dom = site(vhome)
    dom.rename(dom.with_name("moved"))
    os.symlink(dom.name, dom)
    steps = walk(vhome)
    assert [s.number for s in steps] == [1, 2, 3, 4, 5]
    last = steps[-1]
    assert (last.name, last.ok) == ("domain directory", False)
    assert last.text == f"{dom}: Too many levels of symbolic links"
    assert last.fix.startswith("check the disk and the file system")


def test_a_root_installation_another_user_can_change_is_a_fault(root_vhome: Install) -> None:
    """Step 13: what root runs and reads is root's alone; a chown -R of the vpopmail user's
    home by habit (bin/ the vpopmail user's), or a group-writable vpopmail.toml, is a fault
    that names the path and the fix (the walk ends there: exit 13 from vcheck)."""
    site(root_vhome)
    last = walk(root_vhome)[-1]
    assert (last.number, last.name, last.ok) == (13, "installation", True), last.text
    bin_dir = root_vhome.prefix / "bin"
    os.chown(bin_dir, 89, 89)
    try:
        last = walk(root_vhome)[-1]
    finally:
        os.chown(bin_dir, 0, 0)
    assert (last.number, last.ok) == (13, False) and f"{bin_dir} (89:89, mode 0755)" in last.text
    assert "packaging/install" in last.fix and "never chown -R" in last.fix
    config = root_vhome.prefix / "etc" / "vpopmail.toml"
    config.chmod(0o664)
    try:
        checked = root_vhome.run("vcheck", f"alice@{DOMAIN}")
    finally:
        config.chmod(0o644)
    assert checked.returncode == 13, checked.stdout
    assert f"{config} (0:0, mode 0664)" in checked.stdout
    assert walk(root_vhome)[-1].ok


def test_a_vpopmail_home_without_the_installation_is_named(vhome: Install) -> None:
    """paths.vpopmail_home pointing where nothing is installed (a migration's configuration
    written from the defaults, /home/vpopmail, before installing into another PREFIX): step
    12 does not claim there are no front ends, and step 13 names the key, the file and the fix
    (before: "/home/vpopmail/bin: No such file or directory", fix "check the disk")."""
    site(vhome)
    nowhere = vhome.prefix.parent / "nowhere"
    vhome.set_config("paths", "vpopmail_home", str(nowhere))
    steps = walk(vhome)
    assert [s.number for s in steps] == list(range(1, 14))
    assert steps[11].ok and "no C front ends" not in steps[11].text, steps[11].text
    last = steps[-1]
    assert (last.name, last.ok) == ("installation", False)
    assert last.text == (f"paths.vpopmail_home = '{nowhere}' in {vhome.config_path}, but "
                         f"{nowhere}/bin does not exist: no pyvpopmail is installed there")
    assert last.fix == (f"set paths.vpopmail_home in {vhome.config_path} to the PREFIX "
                        f"pyvpopmail is installed in")
