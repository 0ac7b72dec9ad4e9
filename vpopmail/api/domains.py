"""Domains: adding (directory, .qmail-default, user database, qmail routing, postmaster),
finishing what a killed command left, alias domains, the catch-all, deleting."""
from __future__ import annotations

import os

from vpopmail import catchall, dircontrol, ipmap
from vpopmail.api.users import NewUser, UsersMixin
from vpopmail.assign import AssignEntry, check_fields
from vpopmail.errors import (AliasDomainsExist, BadInput, CorruptData, CouldNotMakeDomainDir,
                             DomainAlreadyExists, DomainDoesNotExist, InvalidDomainName,
                             OutsideDomain, UserDoesNotExist, UsernameExists, VpopmailError)
from vpopmail.fsutil import (OwnerIds, atomic_write, is_dir_inside, make_dir, make_dir_inside,
                             remove_inside_until_gone)
from vpopmail.names import check_domain
from vpopmail.stores import UserDatabase

TYPE_CHECKING = False  # the typing idiom without importing typing (the commands' start)
if TYPE_CHECKING:
    from collections.abc import Sequence

    from vpopmail.stores.protocols import AliasDomainsTable

#: a hashed bucket of a domains root: the root's owner's (never a domain owner's, who could
#: rename the other domains there), entered as the root itself by the domain owners of its
#: group (C vpopmail's VPOPMAIL_DIR_MODE)
ROOT_BUCKET_MODE = 0o750


def _is_domain_name(name: str) -> bool:
    """Whether ``name`` is a domain name as vadddomain makes them (lower case)."""
    try:
        return check_domain(name) == name.lower()
    except VpopmailError:
        return False


def _holds_a_domain(path: str, names: tuple[str, ...] = UserDatabase.domain_files) -> bool:
    """Whether the directory ``path`` holds one of ``names``. CorruptData if that cannot be
    looked at (a permission refused is not "no domain": a command would pass over every
    domain and exit 0)."""
    for name in names:
        try:
            os.stat(os.path.join(path, name))
            return True
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as exc:
            raise CorruptData(f"{os.path.join(path, name)}: {exc.strerror}") from None
    return False


class DomainsMixin(UsersMixin):
    """Domains and alias domains: qmail's files, the domains tree and the catch-all."""

    def domains(self) -> list[AssignEntry]:
        """Every domain and alias domain, in users/assign order."""
        return self.qmail.entries()

    def real_domains(self) -> list[AssignEntry]:
        """Every real domain once, in users/assign order (alias domains share their users;
        lines of no domain, qmail-pw2u's for qmail's own users, are passed over)."""
        seen: set[str] = set()
        entries = []
        for entry in self.domains():
            if not entry.is_alias and entry.domain not in seen and self.is_domain_dir(entry):
                seen.add(entry.domain)
                entries.append(entry)
        return entries

    def aliases_of(self, real_domain: str) -> list[str]:
        return [e.domain for e in self.domains() if e.real_domain == real_domain and e.is_alias]

    def mirror_alias_domains(self, aliases: Sequence[str] = (), domains: Sequence[str] = (),
                             rows: Sequence[tuple[str, str]] = ()) -> None:
        """Change the SQL ``aliasdomains`` table (mysql.aliasdomains_table), where Dovecot's
        SQL queries resolve alias domains, as users/assign is about to change: the rows of
        ``aliases`` and those of the real ``domains`` out, ``rows`` (alias, real domain) in;
        the rows of alias domains this host does not route (another host's) stay. Nothing
        with the files. Under users/assign's lock, before users/assign: with the database down
        the command fails before the alias domains change (vdeldomain has dropped the
        domain's IP-map lines by then)."""
        table = self.stores.alias_domains_table
        if table is not None:
            table.change_alias_domains(aliases, domains, rows)

    def sync_alias_domains(self, table: AliasDomainsTable | None,
                           dropped: Sequence[str] = ()) -> None:
        """Make this host's part of ``table`` (the rows naming a domain of users/assign or of
        ``dropped``, domains just taken out of it, as an alias, and those pointing at its real
        domains) equal to users/assign (vregenerate, vconvert); nothing without a table."""
        if table is None:
            return
        entries = self.domains()
        real = [e.domain for e in entries if not e.is_alias] + list(dropped)
        rows = [(e.domain, e.real_domain) for e in entries if e.is_alias]
        table.change_alias_domains([*real, *(alias for alias, _ in rows)], real, rows)

    def add_domain(self, domain: str, postmaster_password: str | None = None, *,
                   base_dir: str | None = None, uid: int | None = None, gid: int | None = None,
                   default_action: str | None = None, quota: str | None = None,
                   optimize: bool = False, encrypted: bool = False,
                   postmaster_gecos: str = "Postmaster") -> AssignEntry:
        """Create a domain: its directory, .qmail-default, user database, qmail routing, and a
        postmaster (when a password, or a hash with ``encrypted``, is given) with the comment
        ``postmaster_gecos`` (C's vadddomain writes "Postmaster", its vpopmaild "postmaster").

        What a killed vadddomain left is finished, not refused: a directory of the domain that
        users/cdb does not route yet is taken over (its users kept), and a domain in users/cdb
        that qmail does not accept or route, or without its postmaster and never used (no
        other user; one emptied of its users is used), gets what it lacks. Any other domain
        is :class:`DomainAlreadyExists`.
        """
        domain = check_domain(domain.lower())
        action = catchall.check(default_action or self.config.users_default_action,
                                self.config.users_hashed_dirs)
        spec = None if postmaster_password is None else NewUser(
            "postmaster", gecos=postmaster_gecos, quota=quota,
            **{"encrypted" if encrypted else "password": postmaster_password})
        uid = self.config.uid if uid is None else uid
        gid = self.config.gid if gid is None else gid
        root = os.path.join(base_dir or self.config.home, self.config.paths_domains_dir)
        check_fields(uid, gid, root)  # before anything is made: the domain directory is below
        # is the name free, then make it: one step, so that of two vadddomain at once the
        # second finds the first one's domain complete (not a directory to take over)
        with self.qmail.assign_lock(make_tree=True):
            existing = self.find_domain(domain)
            # the table Dovecot's queries join, made from the first domain; no row may name
            # the new real domain as an alias (a vaddaliasdomain killed after the table): its
            # users' logins would reach another domain's
            self.mirror_alias_domains(aliases=[] if existing and existing.is_alias else [domain])
            return self._add_domain(domain, spec, action, root, bool(base_dir), uid, gid,
                                    optimize)

    def _add_domain(self, domain: str, spec: NewUser | None, action: str, root: str,
                    own_root: bool, uid: int, gid: int, optimize: bool) -> AssignEntry:
        """:meth:`add_domain` under users/assign's lock."""
        existing = self.find_domain(domain)
        if existing is not None:
            if existing.is_alias or not self.domain_incomplete(existing, spec is not None):
                raise DomainAlreadyExists(domain)
            self.qmail.add_domain(existing, optimize, resume=True)
            if spec is not None:
                self._add_postmaster(existing, spec)
            return existing
        try:
            # a root of its own (``-d``) is the domain owner's, as in C; the shared one vpopmail's
            make_dir(root, 0o750, *((uid, gid) if own_root else (self.config.uid, self.config.gid)))
            root_ids = self._root_owner(root)
        except OSError as exc:
            misplaced = "" if own_root else self.config.misplaced_home()
            raise CouldNotMakeDomainDir(f"{root}: {exc.strerror}"
                                        + (f"; {misplaced}" if misplaced else "")) from None
        # only root can check as the owner; anyone else checks as itself and is refused a
        # permission below, which names the fix, rather than blamed on the domain's owner
        with OwnerIds(uid, gid):
            reachable = os.geteuid() not in (0, uid) or os.access(root, os.X_OK,
                                                                  effective_ids=True)
        if not reachable:  # vdelivermail, vchkpw and the admin commands work there as it
            raise CouldNotMakeDomainDir(
                f"{root}: the domain owner {uid}:{gid} cannot enter it: give the domain a group "
                f"that can (-g {root_ids[1]}) or a directory of its own (-d)")
        with self._dir_lock(root, *root_ids):
            directory = self._domain_dir_on_disk(domain, root)
            adopted = directory is not None
            buckets = (ROOT_BUCKET_MODE, *root_ids)
            if directory is not None:
                bucket = dircontrol.split_bucket(os.path.dirname(directory))[1]
                # killed before its chown?
                make_dir_inside(root, directory, 0o700, uid, gid, buckets)
            else:
                bucket = dircontrol.allocate(root, self.config.users_hashed_dirs, *root_ids,
                                             mode=ROOT_BUCKET_MODE)[0]
                directory = os.path.join(root, bucket, domain)
                try:
                    if not make_dir_inside(root, directory, 0o700, uid, gid, buckets):
                        raise CouldNotMakeDomainDir(f"{directory} already exists")
                except OSError as exc:
                    dircontrol.release(root, bucket, *root_ids)
                    raise CouldNotMakeDomainDir(f"{directory}: {exc.strerror}") from None
            entry = AssignEntry(domain, domain, uid, gid, directory)
        try:
            self.write_dot_qmail_default(entry, action)
            self.backend.create_domain(entry)
            self.qmail.add_domain(entry, optimize, resume=adopted)
        except BaseException:
            if not adopted:
                self._remove_domain_dir(entry, root, bucket)
            raise
        if spec is not None:
            try:
                self._add_postmaster(entry, spec)
            except BaseException:
                if not adopted:
                    self.delete_domain(domain, force=True)
                raise
        return entry

    def _add_postmaster(self, entry: AssignEntry, spec: NewUser) -> None:
        """Add the postmaster unless it exists (in vpasswd: a lagging cdb is rebuilt)."""
        try:
            self.add_users(entry, [spec])
        except UsernameExists:
            pass

    def domain_incomplete(self, entry: AssignEntry, postmaster: bool = True) -> bool:
        """Whether a domain in users/cdb lacks what vadddomain makes after users/cdb: its
        rcpthosts (or morercpthosts) and virtualdomains lines, and (``postmaster``) its
        postmaster (:meth:`_postmaster_pending`): the marks of a vadddomain killed halfway."""
        accepted = self.qmail.read_control("rcpthosts") + self.qmail.read_control("morercpthosts")
        return (entry.domain not in accepted
                or f"{entry.domain}:{entry.domain}" not in self.qmail.read_control("virtualdomains")
                or postmaster and self.backend.get_user(entry, "postmaster") is None
                and self._postmaster_pending(entry))

    def _postmaster_pending(self, entry: AssignEntry) -> bool:
        """Whether a domain whose postmaster lookups do not find is a vadddomain's killed
        before that postmaster was complete, not one whose postmaster was deleted (C refuses
        every domain of users/assign): it holds no user but the postmaster (in vpasswd, its
        cdb not yet written), no alias, and its .dir-control is missing (no user directory
        allotted yet) or counts a slot (the postmaster's; 0 once every user made was
        deleted; a damaged one is not a killed vadddomain's, which writes it whole). With
        the SQL backend a missing file is read in C's dir_control table instead, where C's
        MySQL backend counted (a row of 0: a domain C emptied)."""
        names = {user.name for user in self.backend.list_users(entry)}
        if names:
            return names == {"postmaster"}
        if self.stores.aliases.names(entry):
            return False
        if os.path.lexists(os.path.join(entry.dir, dircontrol.CONTROL)):
            try:
                return self.user_count(entry) > 0
            except CorruptData:
                return False
        c_count = self.stores.c_dir_control
        counted = None if c_count is None else c_count(entry.real_domain)
        return counted is None or counted > 0

    def _domain_dir_on_disk(self, domain: str, root: str | None = None) -> str | None:
        """The directory named ``domain`` in the domains tree (hash buckets included), if any:
        for a domain users/cdb does not route, what a killed vadddomain or vdeldomain left."""
        return dircontrol.find_entry(root or self.config.domains_root, domain)

    def write_dot_qmail_default(self, entry: AssignEntry, action: str) -> None:
        """``| <home>/bin/vdelivermail '' <action>`` for an action :func:`catchall.check`
        passed (a user name becomes ``<domaindir>/<name>``), quoted for qmail-local's sh."""
        line = catchall.line(os.path.join(self.config.home, "bin", "vdelivermail"),
                             catchall.target(action, entry.dir))
        atomic_write(os.path.join(entry.dir, catchall.DOT_QMAIL_DEFAULT),
                     line.encode("utf-8", "surrogateescape"), 0o600, entry.uid, entry.gid)

    def catchall_of(self, entry: AssignEntry) -> str | None:
        """The domain's catch-all action (None: its .qmail-default does not run vdelivermail)."""
        return catchall.read(entry.dir)

    def set_catchall(self, domain: str, action: str) -> None:
        """Make ``action`` the catch-all of ``domain`` (vmoddomain -e), checked as by
        vadddomain -e; a user name must name a user of the domain, whose directory it becomes."""
        entry = self.get_domain(domain)
        action = catchall.check(action, self.config.users_hashed_dirs)
        with self.domain_lock(entry):
            if catchall.is_name(action):
                user = self.backend.get_user(entry, action)
                if user is None:
                    raise UserDoesNotExist(f"{action}@{entry.real_domain}")
                action = user.dir or catchall.target(action, entry.dir)
            self.write_dot_qmail_default(entry, action)

    @staticmethod
    def _root_owner(root: str) -> tuple[int, int]:
        """The owner of a domains root, which its .dir-control, lock and buckets keep: never a
        domain owner's in the shared root, where it could steer where root puts other domains."""
        st = os.stat(root)
        return st.st_uid, st.st_gid

    def _remove_domain_dir(self, entry: AssignEntry, root: str, bucket: str) -> None:
        """Remove the domain directory (gone over again while a delivery or login under way
        writes into it: :func:`remove_inside_until_gone`; no new one can begin, as users/cdb
        no longer routes the domain, and the admin commands wait for the domain's lock), and
        with it its bucket's slot."""
        remove_inside_until_gone(root, entry.dir)
        try:
            owner = self._root_owner(root)
        except FileNotFoundError:  # no domains root there: no directory, no bucket to release
            return
        with self._dir_lock(root, *owner):
            dircontrol.release(root, bucket, *owner)

    def add_alias_domain(self, real_domain: str, alias: str) -> AssignEntry:
        """Make ``alias`` deliver to the users of ``real_domain``. An alias of it that qmail
        does not yet accept or route (a vaddaliasdomain killed halfway: its users/assign line
        written, users/cdb, rcpthosts or virtualdomains not) is finished; any other existing
        ``alias`` is :class:`DomainAlreadyExists`.

        Checked and written under users/assign's lock, as vdeldomain decides what to remove
        under it: a vdeldomain of the real domain at the same moment either sees the alias
        or has removed the real domain before it is checked here (never an alias routed to
        a directory just removed)."""
        self.get_domain(real_domain)  # nothing to lock for (there may be no users/)
        with self.qmail.assign_lock():
            return self._add_alias_domain(real_domain, alias)

    def _add_alias_domain(self, real_domain: str, alias: str) -> AssignEntry:
        """:meth:`add_alias_domain` under users/assign's lock."""
        real = self.get_domain(real_domain)
        alias = check_domain(alias.lower())
        if alias == real.real_domain:
            raise InvalidDomainName("real domain and alias domain are the same")
        entry = AssignEntry(alias, real.real_domain, real.uid, real.gid, real.dir)
        existing = self.find_domain(alias)
        if existing is not None:
            if existing != entry or not self.domain_incomplete(existing, postmaster=False):
                raise DomainAlreadyExists(alias)
        self.mirror_alias_domains(rows=[(entry.domain, entry.real_domain)])
        self.qmail.add_domain(entry, resume=True)  # its very line in users/assign is ours
        return entry

    def delete_domain(self, domain: str, force: bool = False) -> list[str]:
        """Delete a domain (and, with ``force``, its alias domains); an alias domain alone is
        just unlinked. Returns the alias domains removed. The IP map's lines for the domains
        removed go too.

        A domain users/cdb no longer routes but whose directory is still in the domains tree
        is what a killed vdeldomain (or vadddomain), or one that met its database down, left:
        its removal is finished, the user store's rows of the name included."""
        if (self.find_domain(domain) is None
                and self._domain_dir_on_disk(check_domain(domain.lower())) is None):
            raise DomainDoesNotExist(domain)  # nothing to lock for (there may be no users/)
        # what it is, then remove it: one step, so that a vadddomain of the name at the same
        # moment is not taken for a killed one and its directory removed under it
        with self.qmail.assign_lock():
            return self._delete_domain(domain, force)

    def _delete_domain(self, domain: str, force: bool) -> list[str]:
        """:meth:`delete_domain` under users/assign's lock."""
        entry = self.find_domain(domain)
        if entry is None:
            name = check_domain(domain.lower())
            directory = self._domain_dir_on_disk(name)
            if directory is None:
                raise DomainDoesNotExist(domain)
            st = os.stat(directory)
            entry = AssignEntry(name, name, st.st_uid, st.st_gid, directory)
            with self._dir_lock(entry.dir, entry.uid, entry.gid):  # users/cdb has it not
                ipmap.forget_domains(self.config, {name})
                self.qmail.remove_domain(name, missing_ok=True)
                self.backend.delete_domain(entry)
                root, bucket = dircontrol.split_bucket(os.path.dirname(directory))
                self._remove_domain_dir(entry, root, bucket)
            return []
        if entry.is_alias:
            self.mirror_alias_domains(aliases=[entry.domain])
            ipmap.forget_domains(self.config, {entry.domain})
            self.qmail.remove_domain(entry.domain, missing_ok=True)
            return []
        aliases = self.aliases_of(entry.domain)
        if aliases and not force:
            raise AliasDomainsExist(", ".join(aliases))
        root, bucket = dircontrol.split_bucket(os.path.dirname(entry.dir))
        # refuse, before any change, a linked domain directory, and one that is not a domain's
        # (a line vadddomain did not write: qmail-pw2u's for ~alias, a hand-made one)
        if is_dir_inside(root, entry.dir) and not self.is_domain_dir(entry):
            raise OutsideDomain(f"{entry.dir}: users/assign names it for {entry.domain}, but it "
                                f"is not named after the domain or holds no "
                                f"{' nor '.join(self.backend.domain_files)}")
        # the domain's lock until its directory is gone: a change of its users, aliases or
        # limits waits, and then finds it gone, instead of writing into it half removed
        with self.domain_lock(entry):
            # first: a map the caller may not write (root's) stops it before anything is gone
            ipmap.forget_domains(self.config, {entry.domain, *aliases})
            self.mirror_alias_domains(aliases=aliases, domains=[entry.domain])
            for alias in aliases:
                self.qmail.remove_domain(alias)
            self.qmail.remove_domain(entry.domain, missing_ok=True)
            self.backend.delete_domain(entry)
            self._remove_domain_dir(entry, root, bucket)
        return aliases

    def is_domain_dir(self, entry: AssignEntry) -> bool:
        """Whether ``entry.dir`` is a domain's directory as vadddomain makes it: named after the
        real domain, holding one of the files the user store marks its domains with
        (UserDatabase.domain_files). users/assign may hold other lines: qmail-pw2u's for
        qmail's own users (``+alias-`` for ~alias, whose .qmail-default may be
        fastforward's), hand-made ones."""
        return (os.path.basename(entry.dir) == entry.real_domain
                and _holds_a_domain(entry.dir, self.backend.domain_files))

    def discover_domains(self, skipped: list[str] | None = None) -> list[AssignEntry]:
        """The domains found in the domains tree (hash buckets included): every directory with
        a vpasswd or .qmail-default whose name is a domain name (:func:`check_domain`: the
        tree is the domain owner's, and a name such as ``a:b.com`` would break users/assign),
        owned as it is on disk. Alias domains leave no trace there; those in users/assign
        whose real domain was found are kept. A name found in two places (a stray copy) is
        BadInput: which one is the domain is the operator's to say. The paths of directories
        holding those files under another name go to ``skipped``."""
        root = self.config.domains_root
        found: list[AssignEntry] = []

        def walk(directory: str, depth: int) -> None:
            for name in sorted(os.listdir(directory)):
                path = os.path.join(directory, name)
                if not os.path.isdir(path) or os.path.islink(path):
                    continue
                if len(name) == 1 and depth < 3:
                    walk(path, depth + 1)
                elif _holds_a_domain(path):
                    if not _is_domain_name(name):
                        if skipped is not None:
                            skipped.append(path)
                        continue
                    st = os.stat(path)
                    found.append(AssignEntry(name, name, st.st_uid, st.st_gid, path))

        if os.path.isdir(root):
            walk(root, 0)
        real: dict[str, AssignEntry] = {}
        for entry in found:
            if entry.domain in real:
                raise BadInput(f"{entry.domain} is in the domains tree twice: "
                               f"{real[entry.domain].dir} and {entry.dir}; move one away")
            real[entry.domain] = entry
        try:
            known = self.domains()
        except VpopmailError:
            known = []
        for entry in known:
            if entry.is_alias and entry.real_domain in real:
                target = real[entry.real_domain]
                found.append(AssignEntry(entry.domain, target.domain, target.uid, target.gid,
                                         target.dir))
        return found

    def user_count(self, entry: AssignEntry) -> int:
        """Users counted in the domain's .dir-control (what vdominfo shows)."""
        return dircontrol.read(entry.dir).cur_users
