"""vpopmaild against a logged-in attacker: a mail user or a domain administrator trying to
reach the domain owner's ids (a ``.qmail`` program line, an alias line), another account's
password (a system administrator's in their domain, vpasswd), or to get round a flag; and a
client that stops reading. Each of these got through before its fix (C 5.4.33 let them all)."""
from __future__ import annotations

import time
from install_site import Install
from vpopmaild_site import (DOMAIN, OTHER, USERS, Client, after_login,  # noqa: F401
                            built_sites, rsite, site, user_dir, vchkpw_accepts)

ALICE, PM, SA = f"alice@{DOMAIN}", f"postmaster@{DOMAIN}", f"admin@{DOMAIN}"
REFUSED_USER = "-ERR 26.1512 Unauthorized Directory. (vpopmail's control files: .qmail*, " \
    "vpasswd*, .dir-control*, .valias.lock, maildirsize, lastauth)"
REFUSED_ADMIN = REFUSED_USER.replace("1512", "1511")


def test_control_files_are_out_of_reach_below_system_admin(rsite: Install) -> None:
    """A ``.qmail`` written by a user or a domain admin would run its program line as the
    domain owner at the next delivery; vpasswd holds every password of the domain."""
    home, domain_dir = user_dir(rsite, ALICE), rsite.domains / DOMAIN
    (home / "plain").write_text("x\n")
    before = {p: p.read_bytes() for p in (domain_dir / "vpasswd", domain_dir / ".qmail-default",
                                          home / "Maildir" / "maildirsize") if p.exists()}
    evil = "|/bin/touch /tmp/pwned"
    answers = after_login(rsite, ALICE, f"write_file {ALICE}/.qmail", evil, ".",
                          f"write_file {ALICE}/.qmail-ext", evil, ".",
                          f"rename_file {ALICE}/plain {ALICE}/.qmail",
                          f"mk_dir {ALICE}/.qmail-x",
                          f"write_file {ALICE}/Maildir/maildirsize", "0S", ".")
    assert answers == [REFUSED_USER] * 5
    answers = after_login(rsite, PM, f"write_file {DOMAIN}/.qmail-evil", evil, ".",
                          f"rm_file {DOMAIN}/.qmail-default", f"read_file {DOMAIN}/vpasswd",
                          f"write_file {DOMAIN}/vpasswd", "postmaster:x:1:65536:::", ".",
                          f"rename_file {DOMAIN}/alice {DOMAIN}/.qmail-alice",
                          f"write_file {DOMAIN}/.dir-control", "0", ".",
                          f"write_file {ALICE}/.qmail", evil, ".")
    assert answers == [REFUSED_ADMIN] * 7
    assert not (home / ".qmail").exists() and not (home / ".qmail-ext").exists()
    assert not (domain_dir / ".qmail-evil").exists() and (domain_dir / "alice").is_dir()
    assert {p: p.read_bytes() for p in before} == before
    # the ordinary files beside them still work, and a system admin is trusted with them
    assert after_login(rsite, PM, f"write_file {DOMAIN}/notes.txt", "hi", ".") == ["+OK "]
    assert after_login(rsite, SA, f"write_file {DOMAIN}/.qmail-sales", "&bob@example.com",
                       ".") == ["+OK "]
    assert (domain_dir / ".qmail-sales").read_text() == "&bob@example.com\n"


def test_the_login_record_is_out_of_reach_below_system_admin(rsite: Install) -> None:
    """``lastauth`` is vpopmail's record of the last login (get_lastauth, vuserinfo; its
    mtime is what vdeloldusers reads, and it never deletes a user without one): before, a user
    wrote in any time and address, or removed it and was never taken as unused."""
    home = user_dir(rsite, ALICE)
    before = rsite.last_login(ALICE)
    assert before is not None and (home / "lastauth").is_file()
    answers = after_login(rsite, ALICE, f"write_file {ALICE}/lastauth", "10.9.9.9", ".",
                          f"rm_file {ALICE}/lastauth", f"rename_file {ALICE}/lastauth {ALICE}/x")
    assert answers == [REFUSED_USER] * 3
    answers = after_login(rsite, PM, f"rm_file {ALICE}/lastauth")
    assert answers == [REFUSED_ADMIN]
    assert rsite.last_login(ALICE) == before


def test_a_domain_admin_cannot_take_over_a_system_admin(site: Install) -> None:
    """admin@example.com is a system admin: the domain's postmaster may not read its password,
    change it or delete the account (then log in as it, or make another)."""
    answers = after_login(site, PM, f"mod_user {SA}", "clear_text_password mine", ".",
                          f"user_info {SA}", f"del_user {SA}")
    assert answers == ["-ERR 9.503 Not Authorized: a system administrator's account",
                       "-ERR 9.604 Not Authorized: a system administrator's account",
                       "-ERR 9.404 Not Authorized: a system administrator's account"]
    listing = after_login(site, PM, f"list_users {DOMAIN}")
    block = listing[listing.index("name admin"):]
    assert "encrypted_password " in block and "clear_text_password " in block
    assert f"encrypted_password {site.vuser(SA).passwd}" not in listing
    assert vchkpw_accepts(site, SA, USERS[SA]) and not vchkpw_accepts(site, SA, "mine")
    # nor learn where the system admin logs in from (before: get_lastauth told the address)
    assert after_login(site, PM, f"get_lastauth {SA}") == [
        "-ERR 9.3704 Not Authorized: a system administrator's account"]
    # the system admin itself, and other accounts of the domain, as before
    assert after_login(site, SA, f"mod_user {SA}", "comment Chief", ".") == ["+OK ", "+OK "]
    assert after_login(site, PM, f"user_info {ALICE}")[0] == "+OK+"


def test_no_password_change_also_refuses_an_encrypted_password(site: Install) -> None:
    site.ok("vmoduser", "-d", f"bob@{DOMAIN}")
    before = site.vuser(f"bob@{DOMAIN}").passwd
    answers = after_login(site, f"bob@{DOMAIN}", f"mod_user bob@{DOMAIN}",
                          "encrypted_password $1$salt$0123456789abcdefghijkl", ".")
    assert answers == ["+OK ", f"-ERR 0.507 bob@{DOMAIN} may not change its password"]
    assert site.vuser(f"bob@{DOMAIN}").passwd == before


def test_an_encrypted_password_dear_to_check_is_refused_below_system_admin(site: Install
                                                                          ) -> None:
    """A hash's own cost parameters say how long a check of it takes: with sha512-crypt at
    999,999,999 rounds (3 minutes a try), bcrypt at cost 31 (a day) or yescrypt at N=2^18,
    anyone who tries a password for that account (vchkpw under qmail-popup, vpopmaild) holds
    a CPU for as long, and a mail user could set one for themselves (before: taken)."""
    before = site.vuser(ALICE).passwd
    dear = ["$6$rounds=999999999$salt$0123456789abcdefghijkl", "$2b$31$" + "a" * 53,
            "$y$jFT$abcdefghijklmnop$0123456789abcdefghijklmnopqrstuvwxyzABCDE",
            "$argon2id$v=19$m=67108864,t=3,p=4$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
            "_zzzzsaltABCDEFGHIJK",  # BSDi DES: its iterations are not read, so not known
            # digits int() takes that are not ASCII (before: ValueError, the session dropped)
            "$6$rounds=\u0663\u0660\u0660\u0660$salt$0123456789abcdefghijkl",
            "$2b$\u00b2$" + "a" * 53,
            "$argon2id$v=19$m=\u00b2,t=3,p=4$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA"]
    lines = [line for hashed in dear for line in (f"mod_user {ALICE}",
                                                  f"encrypted_password {hashed}", ".")]
    answers = after_login(site, ALICE, *lines)
    assert answers == ["+OK ", "-ERR 0.507 an encrypted_password whose check may be dear "
                       "(a form or cost parameters past what vpopmaild takes below a system "
                       "administrator)"] * len(dear)
    answers = after_login(site, PM, f"mod_user {ALICE}", f"encrypted_password {dear[0]}", ".")
    assert answers[1].startswith("-ERR 0.507 ")
    assert site.vuser(ALICE).passwd == before
    # the forms and costs of every scheme and common tool (here set by the domain admin), and
    # a system admin's any hash
    fine = ["$6$rounds=656000$salt$0123456789abcdefghijkl", "$6$salt$0123456789abcdefghijkl",
            "$2y$12$" + "a" * 53, "$y$j9T$abcdefghijklmnop$" + "0123456789" * 4 + "abc",
            "$1$salt$0123456789abcdefghijkl", "abcdefghijklm",
            "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
            "{SSHA}c2FsdHNhbHRzYWx0c2FsdHNhbHQ="]
    for hashed in fine:
        assert after_login(site, PM, f"mod_user {ALICE}", f"encrypted_password {hashed}",
                           ".") == ["+OK ", "+OK "], hashed
        assert site.vuser(ALICE).passwd == hashed
    assert after_login(site, SA, f"mod_user {ALICE}", f"encrypted_password {dear[0]}",
                       ".") == ["+OK ", "+OK "]


def test_a_domain_admin_adds_forwards_not_programs_or_files(site: Install) -> None:
    """An alias line is a .qmail line run by qmail-local as the domain owner: a domain admin
    may forward, comment, or deliver to a maildir of their own domain, nothing else."""
    own = user_dir(site, ALICE) / "Maildir"
    other = user_dir(site, f"carol@{OTHER}") / "Maildir"
    bad = ["|/bin/touch /tmp/pwned", "/etc/passwd", f"{other}/", f"{own}/../../{OTHER}/x/",
           "./../other.org/carol/Maildir/", f"{own}"]
    answers = after_login(site, PM, *(f"add_alias sales@{DOMAIN} {line}" for line in bad))
    assert answers == ["-ERR 17.907 Alias Insertion Failed: a domain administrator's alias "
                       "lines are addresses, # comments, or maildirs of the domain"] * len(bad)
    assert after_login(site, PM, f"list_alias sales@{DOMAIN}") == ["+OK+", "."]
    good = [f"&bob@{DOMAIN}", f"carol@{OTHER}", "#", f"{own}/"]
    assert after_login(site, PM, *(f"add_alias sales@{DOMAIN} {line}" for line in good)) == \
        ["+OK "] * len(good)
    assert after_login(site, SA, f"add_alias info@{DOMAIN} |/bin/true") == ["+OK "]


def test_a_client_that_stops_reading_is_dropped(rsite: Install) -> None:
    """An answer the client never reads must not hold the process (and a tcpserver slot)
    for ever: writing times out as reading does."""
    (user_dir(rsite, ALICE) / "big").write_bytes(b"y" * 999 + b"\n" * 1 + b"z" * 900_000)
    client = Client(rsite, "-t", "1")
    assert client.line() == "+OK "
    client.send(f"slogin {ALICE} {USERS[ALICE]}")
    assert client.line() == "+OK "
    for _ in range(4):
        client.send(f"read_file {ALICE}/big")
    start = time.monotonic()
    try:
        code = client.proc.wait(20)
    finally:
        client.proc.kill()
        client.close()
    assert code == 1 and time.monotonic() - start < 10


def test_a_domain_admin_cannot_reach_a_system_admin_directory(rsite: Install) -> None:
    """The system admin's mail (a password reset, say) and directory are not the domain
    admin's, whichever way the path is written."""
    home = user_dir(rsite, SA)
    (home / "Maildir" / "new" / "1.M1P1.host").write_text("your new password: x\n")
    refused = "-ERR 26.1511 Unauthorized Directory. (a system administrator's account)"
    answers = after_login(rsite, PM, f"read_file {SA}/Maildir/new/1.M1P1.host",
                          f"list_dir {home}/Maildir/new", f"stat_file {DOMAIN}/admin/Maildir",
                          f"rm_dir {SA}/Maildir", f"rename_file {DOMAIN}/admin {DOMAIN}/mine",
                          f"write_file {home}/x", "y", ".")
    assert answers == [refused] * 6
    assert (home / "Maildir" / "new" / "1.M1P1.host").exists() and not (home / "x").exists()
    assert after_login(rsite, SA, f"read_file {SA}/Maildir/new/1.M1P1.host")[0] == "+OK+"
    assert after_login(rsite, PM, f"list_dir {ALICE}/Maildir")[0] == "+OK+"


def test_a_domain_admin_cannot_remove_or_move_a_bucket_holding_a_system_admin(
        rsite: Install) -> None:
    """Past 100 users a domain's accounts live in hashed buckets (``example.com/0/boss``):
    removing or renaming the bucket would take a system admin's directory with it (their mail
    gone, or a directory the domain admin made in its place read as theirs)."""
    domain_dir = user_dir(rsite, SA).parent
    control = domain_dir / ".dir-control"
    lines = control.read_text().split("\n")
    lines[0] = "99"  # the domain's directory holds 99 accounts: the 100th goes to bucket 0
    control.write_text("\n".join(lines))
    rsite.ok("vadduser", f"boss@{DOMAIN}", "bosspw")
    rsite.ok("vmoduser", "-S", f"boss@{DOMAIN}")
    home = user_dir(rsite, f"boss@{DOMAIN}")
    assert home.parent == domain_dir / "0", home
    refused = "-ERR 26.1511 Unauthorized Directory. (a system administrator's account)"
    answers = after_login(rsite, PM, f"rm_dir {DOMAIN}/0", f"rename_file {DOMAIN}/0 {DOMAIN}/z",
                          f"rename_file {home.parent} {DOMAIN}/y", f"list_dir {DOMAIN}/0")
    assert answers[:3] == [refused] * 3, answers
    assert answers[3:] == ["+OK+", "boss dir", "."], answers  # looking is not moving
    assert (home / "Maildir").is_dir() and not (domain_dir / "z").exists()
    assert vchkpw_accepts(rsite, f"boss@{DOMAIN}", "bosspw")
