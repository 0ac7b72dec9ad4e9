"""vcheck's work: walk the path mail and logins take for one address, step by step, and name
the fix for the first thing that is wrong.

The steps, in order (a step's number is vcheck's exit status when it fails):

 1 address           the name is one vpopmail accepts (vpopmail/names.py)
 2 users/assign      has the domain's line (without it but with the domain directory present:
                     qmail-pw2u or a hand edit wiped it -> vregenerate)
 3 users/cdb         present, not older than users/assign, same records as qmail-newu builds
 4 qmail control     rcpthosts (or morercpthosts + its cdb) and virtualdomains route the domain,
                     locals does not claim it
 5 domain directory  exists, owned by the uid/gid of its assign line
 6 .qmail-default    exists, runs vdelivermail, not world-writable
 7 vpasswd or       the user backend checks its own store (UserDatabase.verify): vpasswd
   users table       readable, well formed, vpasswd.cdb holds the same records, both owned by
                     the domain owner; or the SQL server answers and has the domain's table
 8 user              the user exists (or a ``.qmail-<name>`` of the domain takes its mail)
 9 Maildir           user directory, Maildir, cur/new/tmp: directories owned by the domain
                     owner, mode 0700
10 maildirsize       parses, quota line = the user's quota as a delivery reads it (1M is
                     1048576S), agrees with a recount where the next delivery would trust
                     it; none for a user without quota
11 flags             user flags (ORed with the domain limits unless V_OVERRIDE) that refuse
                     POP/IMAP/webmail/SMTP AUTH/relaying or bounce mail
12 vpopmail-server   where bin/vdelivermail and bin/vchkpw are the C front ends: whether the
                     server answers them (when it is down, they run the Python programs:
                     mail and logins work, at the Python programs' cost; not a fault); one
                     that takes the connection but does not answer within 10 s, or whose
                     queue of waiting callers is full, is a fault (the front ends wait for it);
                     down is a fault with server.smtp_auth_callers (their logins fail) or
                     server.dovecot_callers (Dovecot 2.4's logins fail, or wait in the
                     queue of the lookup socket systemd holds)
13 installation      paths.vpopmail_home holds an installation (its bin/: not the defaults'
                     /home/vpopmail kept for another PREFIX); in a root installation (root
                     owns qmail's users/ or bin/), what root runs and reads is root's, no
                     one else's to write: PREFIX, bin/, lib/,
                     libexec/, run/ and the programs in bin/ and libexec/, etc/ (or
                     root:group 01775, where the vpopmail user adds its relay files),
                     vpopmail.toml and its cache (a ``chown -R vpopmail ~vpopmail`` by habit
                     undoes it)
"""
from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Callable, Iterator

from maildir import SUBDIRS
from maildir.quota import (MAILDIRSIZE, RECALC_SIZE, STALE_SECONDS, has_quota, is_over,
                           load_maildirsize, record_quota, scan_usage, usage_percent)
from vpopmail import catchall, cdb, flags
from vpopmail.api import Vpopmail
from vpopmail.assign import AssignEntry, cdb_records
from vpopmail.errors import CannotReadAssign, VpopmailError
from vpopmail.flags import VMODUSER_LETTERS
from vpopmail.limits import SWITCHES
from vpopmail.names import check_domain, check_user, split_address
from vpopmail.stores import Fault, VUser

#: flag bit -> what it refuses
BLOCKING = (
    (flags.NO_POP, "POP3 logins are refused (NO_POP)"),
    (flags.NO_IMAP, "IMAP logins are refused (NO_IMAP)"),
    (flags.NO_WEBMAIL, "webmail logins are refused (NO_WEBMAIL)"),
    (flags.NO_SMTP, "SMTP AUTH is refused (NO_SMTP)"),
    (flags.NO_RELAY, "no relaying after a POP/IMAP login (NO_RELAY)"),
    (flags.BOUNCE_MAIL, "incoming mail bounces (BOUNCE_MAIL)"),
)
#: flag bit -> its vmoduser letter
LETTER_OF = {bit: letter for letter, bit in VMODUSER_LETTERS.items()}


class Step:
    """One checked step: ``ok`` with what was found (``text``), or the fault and its ``fix``.
    ``final`` ends the walk with success (the address is not a mailbox)."""

    __slots__ = ("number", "name", "ok", "text", "fix", "final")

    def __init__(self, number: int, name: str, ok: bool, text: str, fix: str = "",
                 final: bool = False) -> None:
        self.number = number
        self.name = name
        self.ok = ok
        self.text = text
        self.fix = fix
        self.final = final


class Done(Exception):
    """The walk ends successfully at this step (``text`` says why)."""


def _owner(st: os.stat_result) -> str:
    return f"{st.st_uid}:{st.st_gid}"


class Diagnosis:
    """The checks for one address; iterate :meth:`steps` (it stops after the first fault)."""

    def __init__(self, api: Vpopmail, address: str) -> None:
        self.api = api
        self.config = api.config
        self.address = address
        self.user_name = ""
        self.domain = ""
        self.entry: AssignEntry | None = None
        self.user: VUser | None = None
        self.assign_text = ""

    @property
    def checks(self) -> list[tuple[str, Callable[[], str]]]:
        return [("address", self.check_address), ("users/assign", self.check_assign),
                ("users/cdb", self.check_users_cdb), ("qmail control", self.check_control),
                ("domain directory", self.check_domain_dir),
                (".qmail-default", self.check_dot_qmail_default),
                (self.api.backend.store_name, self.check_store), ("user", self.check_user),
                ("Maildir", self.check_maildir), ("maildirsize", self.check_maildirsize),
                ("flags", self.check_flags), ("vpopmail-server", self.check_server),
                ("installation", self.check_installation)]

    def steps(self) -> Iterator[Step]:
        for number, (name, check) in enumerate(self.checks, 1):
            try:
                yield Step(number, name, True, check())
            except Done as done:
                yield Step(number, name, True, str(done), final=True)
                return
            except Fault as fault:
                yield Step(number, name, False, fault.text, fault.fix)
                return
            except PermissionError as exc:
                owner = self.entry.uid if self.entry else self.config.uid
                yield Step(number, name, False, f"cannot read {exc.filename}: {exc.strerror}",
                           f"run vcheck as root or as the domain owner (uid {owner})")
                return
            except OSError as exc:
                yield Step(number, name, False, f"{exc.filename}: {exc.strerror}",
                           "check the disk and the file system (dmesg), then run vcheck again")
                return

    # helpers ----------------------------------------------------------------------------------

    @property
    def qmail_bin(self) -> str:
        return os.path.join(self.config.qmail_dir, "bin")

    def _entry(self) -> AssignEntry:
        assert self.entry is not None
        return self.entry

    def _chown(self, path: str, recursive: bool = False) -> str:
        entry = self._entry()
        return f"chown {'-R ' if recursive else ''}{entry.uid}:{entry.gid} {path}"

    # 1 ----------------------------------------------------------------------------------------

    def check_address(self) -> str:
        user, domain = split_address(self.address, self.api.default_domain())
        if not domain:
            raise Fault(f"{self.address!r} has no domain and there is no default domain",
                        "give the full address: vcheck user@domain")
        try:
            check_domain(domain)
        except VpopmailError as exc:
            raise Fault(f"{domain!r} is not a valid domain name ({exc})",
                        "check the spelling: domain names are letters, digits, '-' and '.' "
                        "(no '..'), 3 to 96 characters") from None
        try:
            check_user(user, self.config.users_hashed_dirs)
        except VpopmailError as exc:
            raise Fault(f"{user!r} is not a valid user name ({exc})",
                        "check the spelling: vpopmail user names are letters, digits and "
                        "!#$&'*+-.=?^_`{|}~, no leading '.', no '..', 2 to 64 characters "
                        "(1 without hashed directories)") from None
        self.user_name, self.domain = user, domain
        return f"{user}@{domain}"

    # 2 ----------------------------------------------------------------------------------------

    def check_assign(self) -> str:
        path = os.path.join(self.config.qmail_dir, "users", "assign")
        try:
            with open(path, encoding="latin-1") as fh:
                self.assign_text = fh.read()
        except FileNotFoundError:
            self.assign_text = ""
        try:
            entries = self.api.qmail.entries()
        except VpopmailError as exc:
            if not os.path.exists(path):
                fix = (f"put {path} back from a backup, or run vregenerate (rebuilds it and "
                       "users/cdb from the domains directory; alias domains must be added again)")
            elif isinstance(exc, CannotReadAssign):
                fix = f"make {path} readable (root's, mode 0644)"
            else:
                fix = (f"end {path} with a line holding a single '.' (echo . >> {path}), "
                       f"then {self.qmail_bin}/qmail-newu")
            raise Fault(f"{path} cannot be used: {exc}", fix) from None
        found = next((e for e in entries if e.domain == self.domain), None)
        if found is None:
            on_disk = [e for e in self.api.discover_domains() if e.domain == self.domain]
            if on_disk:
                raise Fault(f"users/assign has no line for {self.domain}, but its directory "
                            f"{on_disk[0].dir} exists: users/assign was rewritten without it "
                            "(qmail-pw2u does that)",
                            "run vregenerate (rebuilds users/assign and users/cdb from the "
                            "domains directory)")
            raise Fault(f"{self.domain} is not a vpopmail domain (not in users/assign, no "
                        "directory)", f"vadddomain {self.domain}")
        self.entry = found
        alias = f" (alias of {found.real_domain})" if found.is_alias else ""
        return f"{self.domain}{alias}: {found.dir}, uid {found.uid}, gid {found.gid}"

    # 3 ----------------------------------------------------------------------------------------

    def check_users_cdb(self) -> str:
        assign = os.path.join(self.config.qmail_dir, "users", "assign")
        path = os.path.join(self.config.qmail_dir, "users", "cdb")
        fix = f"{self.qmail_bin}/qmail-newu (or vregenerate)"
        try:
            cdb_st = os.stat(path)
        except FileNotFoundError:
            raise Fault(f"{path} is missing: qmail-lspawn finds no virtual domain", fix) from None
        try:
            wanted = sorted(cdb_records(self.assign_text, assign))
        except VpopmailError as exc:
            raise Fault(str(exc), f"correct {assign}, then {self.qmail_bin}/qmail-newu") from None
        try:
            with cdb.CdbReader(path) as reader:
                have = sorted(reader.items())
        except VpopmailError as exc:
            raise Fault(f"{path} is corrupt: {exc}", fix) from None
        if have != wanted:
            differ = len(set(have) ^ set(wanted))
            raise Fault(f"{path} does not match users/assign ({differ} records differ): qmail "
                        "still routes by the old table", fix)
        if cdb_st.st_mtime_ns < os.stat(assign).st_mtime_ns:
            raise Fault(f"{path} is older than users/assign: qmail-newu has not run since "
                        "users/assign changed", fix)
        return f"{len(have)} records, same as users/assign"

    # 4 ----------------------------------------------------------------------------------------

    def check_control(self) -> str:
        qmail = self.api.qmail
        domain = self.domain
        control = os.path.join(self.config.qmail_dir, "control")
        hup = "then make qmail-send reread its control files (svc -h, or kill -HUP its pid)"
        rcpt = [line.strip().lower() for line in qmail.read_control("rcpthosts")]
        more = [line.strip().lower() for line in qmail.read_control("morercpthosts")]
        if domain in rcpt:
            where = "rcpthosts"
        elif domain in more:
            try:
                listed = cdb.lookup(os.path.join(control, "morercpthosts.cdb"),
                                    domain.encode("latin-1")) is not None
            except (OSError, VpopmailError):
                listed = False
            if not listed:
                raise Fault(f"{domain} is in control/morercpthosts but not in "
                            "morercpthosts.cdb: qmail-smtpd refuses mail for it",
                            f"{self.qmail_bin}/qmail-newmrh")
            where = "morercpthosts"
        else:
            raise Fault(f"{domain} is not in control/rcpthosts (nor morercpthosts): "
                        "qmail-smtpd refuses mail for it", "vregenerate")
        routes = {line.split(":", 1)[0].strip().lower(): line.split(":", 1)[1].strip()
                  for line in qmail.read_control("virtualdomains") if ":" in line}
        if domain not in routes:
            raise Fault(f"{domain} is not in control/virtualdomains: qmail-send does not "
                        "hand its mail to vpopmail", f"vregenerate; {hup}")
        if routes[domain] != domain:
            raise Fault(f"control/virtualdomains sends {domain} to {routes[domain]!r}; "
                        f"vpopmail needs the line '{domain}:{domain}'",
                        f"edit {control}/virtualdomains to read '{domain}:{domain}'; {hup}")
        if domain in (line.strip().lower() for line in qmail.read_control("locals")):
            raise Fault(f"control/locals lists {domain}: qmail delivers its mail to system "
                        "users instead", f"remove {domain} from {control}/locals; {hup}")
        return f"in {where} and virtualdomains, not in locals"

    # 5 ----------------------------------------------------------------------------------------

    def check_domain_dir(self) -> str:
        entry = self._entry()
        try:
            st = os.stat(entry.dir)
        except FileNotFoundError:
            raise Fault(f"{entry.dir} (from users/assign) does not exist",
                        f"restore {entry.dir} from a backup (or vdeldomain "
                        f"{entry.real_domain} and vadddomain it again)") from None
        if not stat.S_ISDIR(st.st_mode):
            raise Fault(f"{entry.dir} is not a directory", f"restore {entry.dir} from a backup")
        if (st.st_uid, st.st_gid) != (entry.uid, entry.gid):
            raise Fault(f"{entry.dir} belongs to {_owner(st)}, users/assign says "
                        f"{entry.uid}:{entry.gid}: deliveries run as {entry.uid} and cannot "
                        "use it", self._chown(entry.dir, recursive=True))
        return f"{entry.dir}, owner {_owner(st)}"

    # 6 ----------------------------------------------------------------------------------------

    def check_dot_qmail_default(self) -> str:
        entry = self._entry()
        path = os.path.join(entry.dir, catchall.DOT_QMAIL_DEFAULT)
        write = (f"vmoddomain -e {catchall.quote(self.config.users_default_action)} "
                 f"{entry.real_domain} (or your own catch-all after -e)")
        try:
            found = catchall.read_file(entry.dir)
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.EINVAL):
                raise
            raise Fault(f"{path} is a symbolic link or not a regular file: vpopmail writes a "
                        "regular file there", write) from None
        if found is None:
            raise Fault(f"{path} is missing: qmail-local bounces mail for every user of "
                        f"{entry.real_domain}", write)
        text, st = found[0].decode("utf-8", "replace"), found[1]
        if "vdelivermail" not in text:
            raise Fault(f"{path} does not run vdelivermail: vpopmail users get no mail", write)
        if st.st_mode & stat.S_IWOTH:
            raise Fault(f"{path} is world-writable: qmail-local defers every message",
                        f"chmod 600 {path}")
        return text.strip().splitlines()[0] if text.strip() else ""

    # 7 ----------------------------------------------------------------------------------------

    def check_store(self) -> str:
        entry = self._entry()
        said = self.api.backend.verify(entry)
        table = self.api.stores.alias_domains_table
        if table is None:
            return said
        real = entry.real_domain
        routed = sorted(self.api.aliases_of(real))
        found = table.alias_domains_of(real)
        mend = "vregenerate (writes this host's rows of it from users/assign)"
        if found is None:
            if routed:
                raise Fault(f"there is no aliasdomains table: Dovecot's SQL queries that join "
                            f"it fail", mend)
            return f"{said}; no aliasdomains table yet (Dovecot's SQL queries need it: {mend})"
        stored, target = found
        if target is not None:
            raise Fault(f"the aliasdomains table makes {real}, a real domain here, an alias "
                        f"of {target}: Dovecot's SQL logins of its users reach {target}'s", mend)
        if stored != routed:
            raise Fault(f"the aliasdomains table gives {real} the alias domains "
                        f"{', '.join(stored) or 'none'}, users/assign "
                        f"{', '.join(routed) or 'none'}: Dovecot's SQL logins through them "
                        f"differ from vchkpw's and vdelivermail's", mend)
        return f"{said}; the aliasdomains table agrees ({len(routed)} alias domains)"

    # 8 ----------------------------------------------------------------------------------------

    def check_user(self) -> str:
        entry = self._entry()
        user = self.api.backend.get_user(entry, self.user_name)
        if user is None:
            dot_qmail = os.path.join(entry.dir, ".qmail-" + self.user_name.replace(".", ":"))
            if os.path.exists(dot_qmail):
                raise Done(f"{self.user_name} is no mailbox; {dot_qmail} takes its mail "
                           "(an alias or forward): nothing more to check")
            try:
                action = catchall.read(entry.dir)
            except VpopmailError:
                action = None
            raise Fault(f"no user {self.user_name} in {entry.real_domain}"
                        + (f": its mail goes to the default action ({action})" if action else ""),
                        f"vadduser {self.user_name}@{entry.real_domain}")
        self.user = user
        return f"{user.dir or '(no directory)'}, quota {user.quota}"

    # 9 ----------------------------------------------------------------------------------------

    def check_maildir(self) -> str:
        entry, user = self._entry(), self.user
        assert user is not None
        address = f"{user.name}@{entry.real_domain}"
        if not user.dir:
            raise Fault("the user record has no directory",
                        f"deliver a message to {address} (vdelivermail makes the directory "
                        "and stores it), or log in once")
        self._check_foreign_dir(address)
        maildir = os.path.join(user.dir, "Maildir")
        paths = [user.dir, maildir, *(os.path.join(maildir, sub) for sub in SUBDIRS)]
        missing, owners, modes, odd = [], [], [], []
        for path in paths:
            try:
                st = os.stat(path)  # a user directory may be a symlink to another disk
            except FileNotFoundError:
                missing.append(path)
                continue
            if not stat.S_ISDIR(st.st_mode):
                odd.append(path)
                continue
            if (st.st_uid, st.st_gid) != (entry.uid, entry.gid):
                owners.append(f"{path} belongs to {_owner(st)}")
            if stat.S_IMODE(st.st_mode) != 0o700:
                modes.append((path, stat.S_IMODE(st.st_mode)))
        problems, fixes = [], []
        if odd:
            problems.append(f"not a directory: {', '.join(odd)}")
            fixes.append(f"move {' '.join(odd)} aside")
        if missing:
            problems.append(f"missing: {', '.join(missing)}")
            fixes.append(f"mkdir -m 700 -p {' '.join(missing)} && "
                         f"{self._chown(user.dir, recursive=True)}")
        if owners:
            problems.append(f"{'; '.join(owners)}, not {entry.uid}:{entry.gid}")
            if not missing:
                fixes.append(self._chown(user.dir, recursive=True))
        if modes:
            problems.append("mode " + ", ".join(f"{oct(m)[2:].zfill(4)} on {p}"
                                                 for p, m in modes) + ", not 0700")
            fixes.append(f"chmod 700 {' '.join(p for p, _ in modes)}")
        if problems:
            raise Fault("; ".join(problems), " && ".join(fixes))
        return f"{maildir} with cur, new, tmp: owner {entry.uid}:{entry.gid}, mode 0700"

    def _check_foreign_dir(self, address: str) -> None:
        """A user directory outside the domain's that another uid owns (``vmoduser -D /etc``)
        is named, and the fix is the record, never a chown -R or chmod of that directory."""
        entry, user = self._entry(), self.user
        assert user is not None
        inside = os.path.isabs(user.dir) and \
            os.path.commonpath([entry.dir, user.dir]) == os.path.normpath(entry.dir)
        try:
            st = os.stat(user.dir)
        except OSError:
            return
        if not inside and (st.st_uid, st.st_gid) != (entry.uid, entry.gid):
            raise Fault(f"{user.dir} is outside the domain directory {entry.dir} and belongs to "
                        f"{_owner(st)}, not {entry.uid}:{entry.gid}: not a directory of "
                        f"{address} alone",
                        f"vmoduser -D {os.path.join(entry.dir, user.name)} {address} (the "
                        "next delivery makes it), or move the mail to a directory of its own")

    # 10 ---------------------------------------------------------------------------------------

    def check_maildirsize(self) -> str:
        entry, user = self._entry(), self.user
        assert user is not None
        address = f"{user.name}@{entry.real_domain}"
        maildir = os.path.join(user.dir, "Maildir")
        path = os.path.join(maildir, MAILDIRSIZE)
        quota = record_quota(user.quota)  # as a delivery reads it: 50M is 52428800S
        fix = f"vsetuserquota {address} {user.quota or 'NOQUOTA'}"
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            if has_quota(quota):
                return f"absent; the next delivery counts the Maildir (quota {quota})"
            return "no quota, no maildirsize"
        if stat.S_ISLNK(st.st_mode) or not stat.S_ISREG(st.st_mode):
            raise Fault(f"{path} is not a regular file: vdelivermail ignores it",
                        f"rm {path} && {fix}")
        if not has_quota(quota):
            raise Fault(f"{path} exists but the user has no quota: POP/IMAP servers that read "
                        "it (Dovecot, Courier) enforce its stale limit",
                        f"vsetuserquota {address} NOQUOTA")
        if (st.st_uid, st.st_gid) != (entry.uid, entry.gid):
            raise Fault(f"{path} belongs to {_owner(st)}, not {entry.uid}:{entry.gid}: "
                        "deliveries cannot record their size", self._chown(path))
        found = load_maildirsize(maildir)
        if found is None:
            raise Fault(f"{path} cannot be parsed", fix)
        if found.quota != quota:
            raise Fault(f"{path} says quota {found.quota!r}, the user has {quota}: readers "
                        "enforce the wrong limit", fix)
        usage = scan_usage(maildir)
        recorded = (found.bytes, found.messages)
        # Maildir++: the next delivery recounts a file that is large, old, or says "over
        # quota" with more than one line; only a file it would trust must be exact
        trusted = (found.file_size < RECALC_SIZE and time.time() - found.mtime <= STALE_SECONDS
                   and not (is_over(quota, recorded, 1) and found.lines != 1))
        if trusted and recorded != usage:
            raise Fault(f"{path} counts {recorded[0]} bytes in {recorded[1]} messages, the "
                        f"Maildir holds {usage[0]} in {usage[1]}: quota decisions are wrong "
                        "until it is recounted", fix)
        state = "" if trusted or recorded == usage else " (stale; the next delivery recounts)"
        return (f"{usage[0]} bytes in {usage[1]} messages of {quota} "
                f"({usage_percent(quota, usage)}%){state}")

    # 11 ---------------------------------------------------------------------------------------

    def check_flags(self) -> str:
        entry, user = self._entry(), self.user
        assert user is not None
        address = f"{user.name}@{entry.real_domain}"
        effective = self.api.effective_flags(user, entry)
        roaming = self.config.relay_roaming_users
        found = [(bit, text) for bit, text in BLOCKING
                 if effective & bit and (bit != flags.NO_RELAY or roaming)]
        if not found:
            extra = " (NO_RELAY is set, but roaming users are off)" if effective & flags.NO_RELAY \
                else ""
            return f"nothing refuses logins or mail (flags {effective}){extra}"
        problems, fixes = [], []
        own = [bit for bit, _ in found if user.flags & bit]
        from_domain = [bit for bit, _ in found if not user.flags & bit]
        for bit, text in found:
            problems.append(text + ("" if user.flags & bit else " from the domain limits"))
        if own:
            keep = user.flags & ~sum(own)
            letters = "".join(LETTER_OF[b] for b in sorted(LETTER_OF) if keep & b)
            fixes.append(f"vmoduser -x{' -' + ' -'.join(letters) if letters else ''} {address}")
        if from_domain:
            switches = self.api.domain_limits(entry).switches
            keep_letters = "".join(sorted(letter for key, (bit, letter) in SWITCHES.items()
                                          if key in switches and bit not in from_domain))
            fixes.append(f"vmoddomlimits -g '{keep_letters}' {entry.real_domain} (every user), "
                         f"or vmoduser -o {address} (this user ignores the domain limits)")
        raise Fault("; ".join(problems), " and ".join(fixes))


    # 12 ---------------------------------------------------------------------------------------

    def check_server(self) -> str:
        from vpopmail import wire

        if self.config.misplaced_home():
            return f"no installation at {self.config.home}: see step 13"
        built = wire.front_ends_built(self.config.home)
        front_ends = list(built)
        try:
            callers = self.config.smtp_auth_callers()
            lookups = self.config.dovecot_callers()
        except VpopmailError as exc:  # the server stops at its start with it
            raise Fault(f"{exc}: vpopmail-server does not start",
                        "mend it in vpopmail.toml") from None
        # what a server that does not serve them means for the listed callers (their
        # vchkpw cannot read the user files as themselves; Dovecot 2.4 has no other way in)
        smtp = (f"the SMTP AUTH logins of server.smtp_auth_callers "
                f"({self.config.server_smtp_auth_callers.strip()})")
        dovecot = (f"Dovecot 2.4's logins through vpopmail-auth.lua (server.dovecot_callers: "
                   f"{self.config.server_dovecot_callers.strip()})")
        theirs = " and ".join([*([smtp] if callers else []), *([dovecot] if lookups else [])])
        if callers and "vchkpw" not in front_ends:  # nothing takes their logins there
            raise Fault(f"bin/vchkpw is the Python program: {smtp} never reach "
                        f"vpopmail-server and fail",
                        "install the C front ends (packaging/install with a C compiler, "
                        "without --no-frontends)")
        if not front_ends and not lookups:
            return "no C front ends installed: vdelivermail and vchkpw are the Python programs"
        path = os.path.normpath(self.config.home_path("server_socket"))
        stale = wire.stale_front_ends(built, path)
        if stale:  # paths.server_socket changed since the install: they never come here
            raise Fault(stale, "run packaging/install again (it builds the front ends for the "
                               "configured socket)")
        programs = " and ".join(front_ends) or "Dovecot's lookups alone"
        python = f": {' and '.join(front_ends)} run the Python programs" if front_ends else ""
        uid = wire.server_uid(self.config.home)
        try:
            return (f"up on {path}, serving {programs}: "
                    f"{wire.ask_status(path, uid=uid)[1].strip()}")
        except wire.Stranger as exc:
            raise Fault(f"vpopmail-server is not what listens on {path}: {exc}, not {uid}; "
                        f"{programs} refuse it, so every delivery and login answers 111",
                        f"stop that process and start bin/vpopmail-server as uid {uid}"
                        ) from None
        except wire.NoAnswer as exc:
            raise Fault(f"vpopmail-server is not answering on {path} ({exc}): every worker is "
                        f"busy, or the server is stopped or stuck; {wire.NO_ANSWER_MEANS}",
                        "see its log; restart it if it is stuck (systemctl restart "
                        "vpopmail-server, or svc -t on its service directory)") from None
        except wire.OtherProtocol as exc:
            other = f"of another protocol version ({path}: {exc}){python} until it reloads"
            if theirs:
                raise Fault(f"{other}: {theirs} fail meanwhile",
                            "reload vpopmail-server (SIGHUP)") from None
            return f"{other} (mail and logins work, more slowly)"
        except (OSError, wire.Drop) as exc:
            down = f"down ({path}: {exc}){python}"
            start = "start bin/vpopmail-server (packaging/service/)"
            held = os.path.normpath(self.config.home_path("lookup_socket")) if lookups else ""
            if held and _listening(held):  # systemd's socket unit holds it
                waiting = (f"{dovecot} wait in the queue of {held}, which listens while the "
                           f"server is down (systemd's vpopmail-server.socket), for the next "
                           f"server")
                raise Fault(f"{down}: {f'{smtp} fail; ' if callers else ''}{waiting}",
                            start) from None
            if theirs:
                raise Fault(f"{down}: {theirs} fail", start) from None
            return f"{down} (mail and logins work, more slowly); {start}"


    # 13 ---------------------------------------------------------------------------------------

    def check_installation(self) -> str:
        home = self.config.home
        misplaced = self.config.misplaced_home()
        if misplaced:
            raise Fault(misplaced, f"set paths.vpopmail_home in {self.config.path} to the PREFIX "
                                   f"pyvpopmail is installed in")
        # root's qmail (users/ is root's) or root's bin/: a root installation; else a sandbox,
        # all its user's (a chown -R of the vpopmail user's home leaves qmail's users/ root's)
        owners = {os.stat(path).st_uid for path in (os.path.join(self.config.qmail_dir, "users"),
                                                    os.path.join(home, "bin"))}
        if 0 not in owners:
            return f"installed by uid {owners.pop()} (a sandbox): all its own"
        paths = [home, *(os.path.join(home, name) for name in ("bin", "lib", "libexec", "run")),
                 *_entries(os.path.join(home, "bin")), *_entries(os.path.join(home, "libexec")),
                 self.config.path, self.config.path + ".cache"]
        problems = [problem for problem in (*(_not_roots(path) for path in paths),
                                            _not_roots(os.path.join(home, "etc"), relay=True))
                    if problem]
        if problems:
            raise Fault(f"what root runs or reads is not root's alone: {'; '.join(problems)}",
                        f"run packaging/install --prefix {home} as root again: it takes the tree "
                        f"back (only domains/, etc/vlimits.default and the relay files are the "
                        f"vpopmail user's; never chown -R {home})")
        return "root's: PREFIX, bin/, lib/, libexec/, run/, the programs, etc/ and vpopmail.toml"


def _listening(path: str) -> bool:
    """Whether a socket listens at ``path`` (a socket file there, and a listening socket of
    that name in /proc/net/unix: its flags hold __SO_ACCEPTCON), found without connecting
    (a connection would queue there for the next server)."""
    try:
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            return False
        with open("/proc/net/unix", encoding="utf-8", errors="surrogateescape") as fh:
            lines = fh.read().splitlines()[1:]
    except OSError:
        return False
    for line in lines:  # Num RefCount Protocol Flags Type St Inode Path
        fields = line.split(None, 7)
        if (len(fields) == 8 and int(fields[3], 16) & 0x10000
                and os.path.normpath(fields[7]) == path):
            return True
    return False


def _entries(directory: str) -> list[str]:
    try:
        return [os.path.join(directory, name) for name in sorted(os.listdir(directory))]
    except FileNotFoundError:
        return []


def _not_roots(path: str, relay: bool = False) -> str | None:
    """What is wrong with ``path`` in a root installation (None: root's, no one else's to
    write; missing). ``relay``: etc/, which may also be root's 01775, where the vpopmail user
    adds its relay files."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    mode = stat.S_IMODE(st.st_mode)
    if relay and st.st_uid == 0 and mode == 0o1775:
        return None
    if st.st_uid != 0 or (mode & 0o022 and not stat.S_ISLNK(st.st_mode)):
        return f"{path} ({_owner(st)}, mode {mode:04o})"
    return None


def diagnose(api: Vpopmail, address: str) -> Iterator[Step]:
    """The steps for ``address``, up to and including the first fault."""
    return Diagnosis(api, address).steps()
