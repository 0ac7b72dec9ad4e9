"""vpopmaild's file commands, run as tcpserver runs the daemon (root) on a root install: each
session is confined to its directory, every path trick (``..``, absolute paths outside, a
directory whose name extends the allowed one, symlinks planted inside) is refused with nothing
read or written outside, and the work is done with the domain owner's ids."""
from __future__ import annotations

import os
from pathlib import Path

from install_site import Install
from vpopmaild_site import (DOMAIN, OTHER, after_login, built_sites, rsite,  # noqa: F401
                            user_dir)

ALICE = f"alice@{DOMAIN}"


def test_a_user_works_in_their_own_directory(rsite: Install) -> None:
    home = user_dir(rsite, ALICE)
    answers = after_login(rsite, ALICE, f"mk_dir {ALICE}/notes",
                          f"write_file {ALICE}/notes/a.txt", "hello", ".x", "", ".",
                          f"read_file {home}/notes/a.txt", f"stat_file {ALICE}/notes/a.txt",
                          f"list_dir {ALICE}/notes", f"rename_file {ALICE}/notes/a.txt "
                          f"{ALICE}/notes/b.txt", f"list_dir {home}/notes")
    assert answers == ["+OK ", "+OK ", "+OK+", "hello", ".x", "", ".", "+OK+", "uid: 89", ".",
                       "+OK+", "a.txt file", ".", "+OK ", "+OK+", "b.txt file", "."]
    made = home / "notes" / "b.txt"
    assert made.read_bytes() == b"hello\n.x\n\n"
    assert (made.stat().st_uid, made.stat().st_mode & 0o777) == (89, 0o600)
    assert (home / "notes").stat().st_uid == 89
    # a lone "." in a file goes out stuffed, as C sends it
    made.write_text("one\n.\ntwo")
    assert after_login(rsite, ALICE, f"read_file {ALICE}/notes/b.txt") == \
        ["+OK+", "one", "..", "two", "."]
    assert after_login(rsite, ALICE, f"rm_file {ALICE}/notes/b.txt", f"rm_dir {ALICE}/notes",
                       f"rm_dir {ALICE}/") == \
        ["+OK ", "+OK ", "-ERR 0.1702 the top directory cannot be the target"]
    assert not (home / "notes").exists() and home.is_dir()


def test_path_tricks_in_every_command_are_refused(rsite: Install, tmp_path: Path) -> None:
    rsite.ok("vadduser", f"alice2@{DOMAIN}", "pw")
    home, neighbour = user_dir(rsite, ALICE), user_dir(rsite, f"alice2@{DOMAIN}")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("root's\n")
    os.symlink(outside, home / "link")
    os.symlink(outside / "secret", home / "file-link")
    (home / "rootonly").write_text("x")
    os.chmod(home / "rootonly", 0o600)
    bad = {
        "..": (f"{ALICE}/../bob", "-ERR 20.1501 Invalid Directory.  .. not allowed in path"),
        "%": (f"{ALICE}/a%b", "-ERR 21.1502 Invalid Directory.  % not allowed in path"),
        "absolute": ("/etc/passwd", "-ERR 26.1512 Unauthorized Directory."),
        "prefix": (f"{neighbour}/Maildir", "-ERR 26.1512 Unauthorized Directory."),
        "other user": (f"bob@{DOMAIN}/x", "-ERR 12.1508 User does not exist"),
        "no slash": ("Maildir", "-ERR 22.1503 Invalid Directory.  Do you need a trailing '/'?"),
        "unknown": (f"nobody@{DOMAIN}/x", "-ERR 12.1508 User does not exist"),  # as "other user"
    }
    commands = ["mk_dir {}", "rm_dir {}", "list_dir {}", "rm_file {}", "write_file {}",
                "read_file {}", "stat_file {}", "rename_file {} " + f"{ALICE}/x",
                f"rename_file {ALICE}/Maildir " + "{}"]
    for what, (path, expected) in bad.items():
        lines: list[str] = []
        for command in commands:
            lines.append(command.format(path))
            if command.startswith("write_file"):
                lines += ["del_user bob@example.com", "."]  # data, never a command
        answers = after_login(rsite, ALICE, *lines)
        assert answers == [expected] * len(commands), what
    # symlinks planted inside are not followed, in any position
    through = f"{ALICE}/link/secret"
    answers = after_login(rsite, ALICE, f"read_file {through}", f"write_file {through}", "new", ".",
                          f"list_dir {ALICE}/link", f"rm_file {through}", f"mk_dir {through}x",
                          f"rename_file {through} {ALICE}/stolen", f"read_file {ALICE}/file-link",
                          f"rm_dir {ALICE}/link", f"read_file {ALICE}/rootonly")
    loop = "Too many levels of symbolic links (symbolic links are not followed)"
    assert answers == [f"-ERR 0.2102 {loop}", f"-ERR 0.2002 {loop}", f"-ERR 0.1802 {loop}",
                       f"-ERR 0.1902 {loop}", f"-ERR 0.1602 {loop}", f"-ERR 0.3803 {loop}",
                       f"-ERR 0.2102 {loop}", "-ERR 0.1702 Not a directory",
                       "-ERR 0.2102 Permission denied"]
    # writing to a symlink replaces the link, never its target
    assert after_login(rsite, ALICE, f"write_file {ALICE}/file-link", "mine", ".") == ["+OK "]
    assert (outside / "secret").read_text() == "root's\n"
    assert not (home / "file-link").is_symlink() and (home / "file-link").read_text() == "mine\n"
    assert sorted(p.name for p in outside.iterdir()) == ["secret"]
    assert "bob" in rsite.vusers(DOMAIN)


def test_file_paths_out_of_reach_do_not_tell_what_exists(rsite: Install) -> None:
    """A path the session may not reach gets one answer whether its user or domain exists
    (before: 11 or 12 for an existing user, 25 for none; 26 for an existing domain, 11 for
    none: a mail user or domain admin could list who and what else the server holds). The
    answers are C's for an existing user or domain."""
    pm, other_pm = f"postmaster@{DOMAIN}", f"postmaster@{OTHER}"
    for who, paths in ((pm, [f"{other_pm}/", f"nobody@{OTHER}/", "nobody@nowhere.net/"]),
                       (ALICE, [f"{other_pm}/", f"nobody@{OTHER}/", f"bob@{DOMAIN}/",
                                f"nobody@{DOMAIN}/"]),
                       (pm, [f"{OTHER}/", "nowhere.net/"]), (ALICE, [f"{OTHER}/", "nowhere.net/"])):
        answers = after_login(rsite, who, *(f"list_dir {path}" for path in paths))
        assert len(set(answers)) == 1 and answers[0].startswith("-ERR "), (who, answers)
    assert after_login(rsite, pm, f"list_dir nobody@{DOMAIN}/") == [
        "-ERR 25.1506 Invalid Directory. Unknown email address"]  # their own domain's


def test_domain_admin_and_system_admin_confinement(rsite: Install) -> None:
    pm, sa = f"postmaster@{DOMAIN}", f"admin@{DOMAIN}"
    domain_dir = rsite.domains / DOMAIN
    assert after_login(rsite, pm, f"write_file {DOMAIN}/motd", "&bob@example.com", ".",
                       f"read_file {ALICE}/Maildir/../x", f"list_dir {rsite.domains}/other.org",
                       f"stat_file {rsite.domains}") == \
        ["+OK ", "-ERR 20.1501 Invalid Directory.  .. not allowed in path",
         "-ERR 26.1511 Unauthorized Directory.", "-ERR 26.1511 Unauthorized Directory."]
    assert (domain_dir / "motd").read_text() == "&bob@example.com\n"
    answers = after_login(rsite, sa, f"list_dir {rsite.domains}", "stat_file other.org/",
                          f"read_file {rsite.prefix}/etc/vpopmail.toml")
    assert answers[0] == "+OK+" and f"{DOMAIN} dir" in answers and "other.org dir" in answers
    assert answers[-4:] == ["+OK+", "uid: 89", ".", "-ERR 26.1510 Unauthorized Directory."]


def test_file_sizes_are_capped(rsite: Install) -> None:
    home = user_dir(rsite, ALICE)
    big = ["x" * 1000] * 1100
    assert after_login(rsite, ALICE, f"write_file {ALICE}/big", *big, ".", "list_dir " + ALICE
                       + "/Maildir/new") == \
        ["-ERR 0.2002 nothing written: more than 1048576 bytes", "+OK+", "."]
    assert not (home / "big").exists()
    (home / "big").write_bytes(b"y" * (2 << 20))
    assert after_login(rsite, ALICE, f"read_file {ALICE}/big") == \
        ["-ERR 0.2102 file larger than 1048576 bytes"]
