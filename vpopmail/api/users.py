"""Users: adding (checked fields, hashed directory, Maildir and maildirsize), importing,
deleting, passwords and quotas, and re-making a lost home."""
from __future__ import annotations

import os

from maildir import is_maildir
from maildir.maildir import make_maildir
from maildir.quota import (LLONG_MAX, NOQUOTA, format_quota, has_quota, quota_text,
                           scan_usage, write_maildirsize)
from vpopmail import catchall, dircontrol, flags
from vpopmail.api.limits import MAX_QUOTA, LimitsMixin
from vpopmail.assign import AssignEntry
from vpopmail.errors import (BadChar, BadInput, CannotDeleteCatchall, CouldNotUpdateFile,
                             GecosTooLong, IllegalUsername, PasswdTooLong, QuotaTooLong,
                             SubdirCreation, UserDirExists, UserDoesNotExist, UsernameExists,
                             VpopmailError)
from vpopmail.fsutil import (OwnerIds, is_dir_inside, list_inside, make_dir_inside, remove_inside,
                             remove_inside_until_gone)
from vpopmail.names import check_user
from vpopmail.passwords import hash_many, hash_password
from vpopmail.stores import VUser

TYPE_CHECKING = False  # the typing idiom without importing collections (start-up)
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

MAX_GECOS = 64
MAX_PASSWD = 128
NULL_REMOTE_IP = "0.0.0.0"


def _check_text(value: str, too_long: type[VpopmailError], limit: int) -> str:
    """Refuse what would break a vpasswd line (newline, NUL) and text longer than ``limit``."""
    if "\n" in value or "\0" in value or "\r" in value:
        raise BadChar("newline or NUL in a text field")
    if len(value) > limit:
        raise too_long()
    return value

class NewUser:
    """What a caller gives to create one user."""

    __slots__ = ("name", "password", "encrypted", "gecos", "quota")

    def __init__(self, name: str, password: str | None = None, encrypted: str | None = None,
                 gecos: str | None = None, quota: str | None = None) -> None:
        self.name = name
        self.password = password
        self.encrypted = encrypted
        self.gecos = gecos
        self.quota = quota

class UsersMixin(LimitsMixin):
    """Users of the domains: every operation on vpasswd (or its table) and user directories."""

    def resolve(self, address: str) -> tuple[str, AssignEntry]:
        """(user name, domain entry) of an address; a bare name uses the default domain."""
        user, entry = self._split(address)
        return check_user(user, self.config.users_hashed_dirs), entry

    def get_user(self, address: str) -> tuple[VUser, AssignEntry]:
        name, entry = self.resolve(address)
        user = self.backend.get_user(entry, name)
        if user is None:
            raise UserDoesNotExist(f"{name}@{entry.real_domain}")
        return user, entry

    def list_users(self, domain: str) -> tuple[list[VUser], AssignEntry]:
        entry = self.get_domain(domain)
        return self.backend.list_users(entry), entry

    def _user_record(self, entry: AssignEntry, spec: NewUser, crypted: str) -> VUser:
        """The record for a new user; ``crypted`` is the hash of ``spec.password`` if any."""
        name = check_user(spec.name.lower(), self.config.users_hashed_dirs)
        if spec.gecos is not None and ":" in spec.gecos:
            raise BadChar("':' in the comment (gecos)")  # as C's vadduser; changes drop it
        gecos = self.gecos_text(spec.gecos or name)  # none or empty: the name, as C
        quota = self.quota_string(spec.quota) if spec.quota is not None else self.default_quota(entry)
        clear = ""
        if spec.encrypted is not None:
            crypted = _check_text(spec.encrypted, PasswdTooLong, MAX_PASSWD)
            if ":" in crypted:
                raise BadChar("':' in an encrypted password")
        elif spec.password and self.config.passwords_clear_passwords:
            clear = spec.password
        return VUser(name, crypted, gecos=gecos, dir="", quota=quota, clear=clear)

    def _hash_new(self, specs: list[NewUser]) -> list[str]:
        """Hashes for the specs' clear-text passwords ('' where there is none), batched."""
        wanted = [i for i, s in enumerate(specs) if s.encrypted is None and s.password]
        hashes = hash_many([specs[i].password or "" for i in wanted],
                           self.config.passwords_scheme)
        crypted = [""] * len(specs)
        for i, value in zip(wanted, hashes):
            crypted[i] = value
        return crypted

    @staticmethod
    def gecos_text(gecos: str) -> str:
        """A gecos as stored: ``:`` removed (as C), newline/NUL and over-long text refused."""
        return _check_text(gecos.replace(":", ""), GecosTooLong, MAX_GECOS)

    @staticmethod
    def quota_string(quota: str) -> str:
        """A quota as stored: ``NOQUOTA`` or the Maildir++ form; nonsense is refused."""
        if len(quota) > MAX_QUOTA:
            raise QuotaTooLong(quota)
        if quota.upper() == NOQUOTA:
            return NOQUOTA
        text = quota_text(quota)
        if not text:
            raise BadInput(f"{quota!r} is not a quota (use NOQUOTA, 10M, 1000000S,100C)")
        if any(int(part[:-1]) >= LLONG_MAX for part in text.split(",")):
            # C's reader saturates there: not the number given
            raise BadInput(f"{quota!r} is larger than a quota can be ({LLONG_MAX - 1} at most)")
        return text

    def add_user(self, address: str, password: str | None = None, index: bool = True, *,
                 limited: bool = False, **options: str | None) -> VUser:
        """Add one user; ``options``: encrypted, gecos, quota; ``limited``: as
        :meth:`add_users`."""
        name, entry = self.resolve(address)
        return self.add_users(entry, [NewUser(name, password, **options)], index, limited)[0]

    def rebuild_index(self, domain: str) -> None:
        """Rebuild the backend's lookup index of a domain (vmkpasswd)."""
        entry = self.get_domain(domain)
        with self.domain_lock(entry):
            self.backend.rebuild_index(entry)

    def check_new_users(self, entry: AssignEntry, specs: list[NewUser], aliases: bool = True
                        ) -> None:
        """Raise what :meth:`add_users` would refuse (names, clashes with users and, unless
        ``aliases`` is false, with aliases; fields), changing nothing."""
        names = [check_user(s.name.lower(), self.config.users_hashed_dirs) for s in specs]
        if len(set(names)) != len(names):
            raise UsernameExists("the same name twice in one batch")
        existing = {u.name for u in self.backend.list_users(entry)} if len(specs) > 1 else set()
        for name in names:
            if name in existing or (len(specs) == 1 and self.backend.get_user(entry, name)):
                raise UsernameExists(f"{name}@{entry.real_domain}")
        if aliases:
            self.stores.aliases.refuse_users_named_as_aliases(entry, names)
        for spec in specs:
            self._user_record(entry, spec, "")
            if spec.encrypted is None and spec.password:
                _check_text(spec.password, PasswdTooLong, MAX_PASSWD)

    def add_users(self, entry: AssignEntry, specs: list[NewUser], index: bool = True,
                  limited: bool = False) -> list[VUser]:
        """Add many users to one domain with one database write: cost grows linearly.
        ``index=False`` leaves vpasswd.cdb to a later :meth:`rebuild_index` (vadduser -O).
        ``limited``: a domain administrator's addition, refused (LimitReached) past the
        domain's maxpopaccounts, which counts every user of the domain (:meth:`within_limit`).

        All records are checked first; directories are made next; the database write comes
        last, and if it fails the directories made are removed again.
        """
        self.check_new_users(entry, specs)  # before the hashing, which may take long
        crypted = self._hash_new(specs)

        def add() -> list[VUser]:
            self.check_new_users(entry, specs)
            records = [self._user_record(entry, spec, hashed)
                       for spec, hashed in zip(specs, crypted)]
            return self._store_new_users(entry, records, records, index)

        if not limited:
            with self.domain_lock(entry):
                return add()
        return self.within_limit(entry, "maxpopaccounts",
                                 lambda: len(self.backend.list_users(entry)),
                                 lambda: len(specs), add)

    def import_users(self, entry: AssignEntry, users: list[VUser], index: bool = True
                     ) -> list[VUser]:
        """Add complete records as they are (vconvert): hash, clear text, uid, flags, gecos and
        quota kept. A record keeps its directory when that is an existing
        ``<domain dir>[/<bucket>]/<name>`` (a vpasswd being restored); any other gets a new
        one, made as :meth:`add_users` makes it. All is checked first; one database write."""
        records = [self.imported_record(user) for user in users]
        with self.domain_lock(entry):
            # records as they are: a user and an alias of one name, as a C site may hold,
            # stay so
            self.check_new_users(entry, [NewUser(r.name, gecos="") for r in records],
                                 aliases=False)
            fresh = [r for r in records if not self._own_user_dir(entry, r)]
            return self._store_new_users(entry, records, fresh, index)

    def _store_new_users(self, entry: AssignEntry, records: list[VUser], fresh: list[VUser],
                         index: bool) -> list[VUser]:
        """Give each of ``fresh`` (some of ``records``) a new hashed directory, then store all
        ``records`` in one database write; on any failure the directories made for users the
        store did not take are removed and their slots released."""
        made: list[tuple[str, str]] = []
        kept = 0
        try:
            if fresh:
                with self._dir_lock(entry.dir, entry.uid, entry.gid):
                    buckets = dircontrol.allocate(entry.dir, self.config.users_hashed_dirs,
                                                  entry.uid, entry.gid, len(fresh))
                for record, bucket in zip(fresh, buckets):
                    record.dir = os.path.join(entry.dir, bucket, record.name)
                    self._make_user_dir(record, entry)
                    made.append((record.dir, bucket))
            try:
                self.backend.add_users(entry, records, index)
            except BaseException:
                # users the store took before it failed (vpasswd written, its cdb not: a full
                # disk) exist: their directories and slots stay, a rerun mends the cdb
                try:
                    stored = {u.dir for u in self.backend.list_users(entry)} if made else set()
                except VpopmailError:  # unreadable: as before the write
                    stored = set()
                kept = sum(d in stored for d, _ in made)
                made = [(d, b) for d, b in made if d not in stored]
                raise
        except BaseException:
            self._undo_user_dirs(entry, made, len(fresh) - kept)
            raise
        self._record_creation(entry, fresh)
        return records

    def _index_lags(self, entry: AssignEntry, name: str) -> bool:
        """Whether the store holds ``name`` although its lookup index (vpasswd.cdb) said it
        does not: a command killed, or failing on a full disk, between the two writes. The
        index is rebuilt then."""
        if all(u.name != name for u in self.backend.list_users(entry)):
            return False
        self.backend.rebuild_index(entry)
        return True

    def _record_creation(self, entry: AssignEntry, users: list[VUser]) -> None:
        """vadduser's lastauth (C's vset_lastauth with 0.0.0.0), once the users are stored:
        never a lastauth row for a user that does not exist. The lastauth file goes into the
        user directory with the domain owner's ids, as vchkpw writes it."""
        if self.config.logging_auth_logging:
            with OwnerIds(entry.uid, entry.gid):
                for user in users:
                    self.backend.record_login(entry, user, NULL_REMOTE_IP)

    def imported_record(self, user: VUser) -> VUser:
        """A copy of ``user`` (name lower-cased) if every field can be stored as it is."""
        name = check_user(user.name.lower(), self.config.users_hashed_dirs)
        where = f"{name}: "
        for value, too_long, limit in ((user.passwd, PasswdTooLong, MAX_PASSWD),
                                       (user.gecos, GecosTooLong, MAX_GECOS),
                                       (user.clear, PasswdTooLong, MAX_PASSWD)):
            _check_text(value, too_long, limit)
        for label, value in (("password", user.passwd), ("gecos", user.gecos),
                             ("directory", user.dir), ("quota", user.quota)):
            if any(c in value for c in ":\n\r\0"):
                raise BadChar(f"{where}':', newline or NUL in the {label}")
        if user.uid < 0 or user.flags < 0:
            raise BadInput(f"{where}negative uid or flags")
        if user.dir and not user.dir.startswith("/"):
            raise BadInput(f"{where}directory {user.dir!r} is not an absolute path")
        if user.quota not in (NOQUOTA, "") and format_quota(user.quota) != user.quota:
            raise BadInput(f"{where}{user.quota!r} is not a quota as vpopmail stores it")
        if len(user.quota) > MAX_QUOTA:  # what vsetuserquota refuses, and C's pw_shell holds
            raise QuotaTooLong(f"{where}{user.quota!r} is longer than {MAX_QUOTA} characters")
        return user.copy(name=name)

    @staticmethod
    def _own_user_dir(entry: AssignEntry, user: VUser) -> bool:
        """Whether ``user.dir`` is an existing ``<entry.dir>[/<bucket>]/<user.name>``."""
        path = user.dir
        if not path or os.path.normpath(path) != path or os.path.basename(path) != user.name:
            return False
        root, _ = dircontrol.split_bucket(os.path.dirname(path))
        return root == entry.dir and os.path.isdir(path) and not os.path.islink(path)

    def make_missing_user_dir(self, entry: AssignEntry, user: VUser) -> VUser:
        """Give a user whose record has no directory (an imported or hand-made record) one,
        as vadduser would have, and store it (vdelivermail does this on first delivery)."""
        with self.domain_lock(entry):
            bucket = dircontrol.allocate(entry.dir, self.config.users_hashed_dirs,
                                         entry.uid, entry.gid)[0]
            user = user.copy()
            user.dir = os.path.join(entry.dir, bucket, user.name)
            self._make_user_dir(user, entry)
            directory = user.dir
            stored = self.modify_users(entry, [user.name], lambda u: u.copy(dir=directory))[0]
            self._record_creation(entry, [stored])
            return stored

    def ensure_home(self, entry: AssignEntry, user: VUser) -> VUser:
        """``user`` with a directory and a complete Maildir, re-making what is missing (C
        vpopmail deferred mail forever, and failed logins, for a lost Maildir).

        Under the domain's lock, with the user read again there: a delivery or login that
        found the user before a vdeldomain or vdeluser removed it makes nothing (its
        directory would outlive it), DomainDoesNotExist or UserDoesNotExist instead."""
        with self.domain_lock(entry):
            current = self.backend.get_user(entry, user.name)
            if current is None:
                raise UserDoesNotExist(f"{user.name}@{entry.real_domain}")
            user = current
            if not user.dir:
                user = self.make_missing_user_dir(entry, user)
            maildir = os.path.join(user.dir, "Maildir")
            if not is_maildir(maildir):
                try:
                    os.makedirs(user.dir, 0o700, exist_ok=True)
                    make_maildir(maildir)
                except OSError as exc:
                    raise SubdirCreation(f"{maildir}: {exc.strerror}") from None
            return user

    def _make_user_dir(self, user: VUser, entry: AssignEntry) -> None:
        """Make a new user's directory inside the domain directory, reached through real
        directories only (see :func:`~vpopmail.fsutil.open_inside`), then its Maildir and
        maildirsize: all with the domain owner's ids, so that a name its owner swaps for a
        symbolic link meanwhile reaches nothing the owner could not reach itself."""
        if not self._new_user_dir(user, entry):
            self._replace_leftover_dir(user, entry)
        try:
            with OwnerIds(entry.uid, entry.gid):
                make_maildir(os.path.join(user.dir, "Maildir"), entry.uid, entry.gid)
                if has_quota(user.quota):
                    write_maildirsize(os.path.join(user.dir, "Maildir"), user.quota, (0, 0),
                                      entry.uid, entry.gid)
        except OSError as exc:
            remove_inside(entry.dir, user.dir)
            raise UserDirExists(f"{user.dir}: {exc.strerror}") from None

    @staticmethod
    def _new_user_dir(user: VUser, entry: AssignEntry) -> bool:
        """Make ``user.dir`` (its bucket made if missing) with the domain owner's ids; False if
        it already is a real directory of the domain."""
        try:
            with OwnerIds(entry.uid, entry.gid):
                return make_dir_inside(entry.dir, user.dir, 0o700, entry.uid, entry.gid)
        except OSError as exc:
            raise UserDirExists(f"{user.dir}: {exc.strerror} (for the domain owner "
                                f"{entry.uid}:{entry.gid}, whose ids make it)") from None

    def _replace_leftover_dir(self, user: VUser, entry: AssignEntry) -> None:
        """``user.dir`` exists but vpasswd has no such user: a vadduser killed before its
        vpasswd write, or a vdeluser killed while removing the tree, left it. It is removed
        (a deleted user's mail is not handed to a new user of that name) and made again. If
        vpasswd has the user (vpasswd.cdb, which the caller checked, lagging after a kill
        between the two writes), the cdb is rebuilt and the user exists. A directory that is
        neither empty nor holds a Maildir is no user's leftover (a mailing list's, an
        autoresponder's): it is kept, and the name refused."""
        if self._index_lags(entry, user.name):
            raise UsernameExists(f"{user.name}@{entry.real_domain}")
        if not self._is_leftover(entry, user.dir):
            raise UserDirExists(f"{user.dir}: it holds no Maildir, so it is no user's "
                                "leftover: it is kept (move it away, or choose another name)")
        remove_inside(entry.dir, user.dir, last="Maildir")
        if not self._new_user_dir(user, entry):
            raise UserDirExists(user.dir)

    def _is_leftover(self, entry: AssignEntry, directory: str) -> bool:
        """Whether a directory of the domain named as a user that the store does not hold is
        what a killed vadduser or vdeluser leaves: empty, or holding a Maildir (removed last),
        and no user's home (vmoduser -D may have given it to another user)."""
        found = list_inside(entry.dir, directory)
        return (not found or "Maildir" in found) and not self._lived_in(entry, directory)

    def _lived_in(self, entry: AssignEntry, directory: str) -> bool:
        """Whether a stored user of the domain has its home at or below ``directory``, or above
        it but below the domain directory (vmoduser -D can give two users one directory):
        removing it would take their mail."""
        mine = directory.rstrip("/") + "/"
        domain = entry.dir.rstrip("/") + "/"
        for user in self.backend.list_users(entry):
            home = user.dir.rstrip("/") + "/"
            if user.dir and (home.startswith(mine) or mine.startswith(home) and home != domain):
                return True
        return False

    def _leftover_user(self, entry: AssignEntry, name: str) -> VUser:
        """A record of ``name``'s directory alone, for a user the store no longer holds whose
        directory (:meth:`_is_leftover`, in the domain directory or a bucket) a vdeluser killed
        in the tree removal left; UserDoesNotExist if there is none (or it is the catch-all's)."""
        user = VUser(name, dir=dircontrol.find_entry(entry.dir, name) or "")
        if not (user.dir and self._is_leftover(entry, user.dir)) or self._is_catchall(entry, user):
            raise UserDoesNotExist(f"{name}@{entry.real_domain}")
        return user

    def _undo_user_dirs(self, entry: AssignEntry, made: list[tuple[str, str]],
                        allocated: int) -> None:
        for directory, _ in made:
            remove_inside(entry.dir, directory)
        with self._dir_lock(entry.dir, entry.uid, entry.gid):
            for _, bucket in made:
                dircontrol.release(entry.dir, bucket, entry.uid, entry.gid)
            control = dircontrol.read(entry.dir)
            control.cur_users = max(control.cur_users - (allocated - len(made)), 0)
            dircontrol.write(entry.dir, control, entry.uid, entry.gid)

    def delete_user(self, address: str) -> VUser:
        """Delete a user, its directory and its mail. The domain's catch-all target is kept."""
        name, entry = self.resolve(address)
        with self.domain_lock(entry):
            return self._delete_user(name, entry)

    def _delete_user(self, name: str, entry: AssignEntry) -> VUser:
        """:meth:`delete_user` under the domain's lock."""
        user = self.backend.get_user(entry, name)
        if user is None and self._index_lags(entry, name):
            user = self.backend.get_user(entry, name)
        if user is None:  # a vdeluser killed in the tree removal: finish it
            user = self._leftover_user(entry, name)  # (no one else's home: _is_leftover)
            self._remove_user_dir(entry, user)
            return user
        if self._is_catchall(entry, user):
            raise CannotDeleteCatchall(f"{name}@{entry.real_domain}")
        # a directory that is not a real one of the domain (``..``, a symbolic link, outside:
        # a vpasswd line its owner edited) is refused before anything is deleted
        present = bool(user.dir) and is_dir_inside(entry.dir, user.dir)
        try:
            self.backend.delete_user(entry, name)
        except UserDoesNotExist:
            # gone from vpasswd, still in vpasswd.cdb: a vdeluser killed between the two
            # writes. Make the cdb agree, then finish with the directory.
            self.backend.rebuild_index(entry)
            if not present:
                raise
        if user.dir and not self._lived_in(entry, user.dir):  # another user's home stays
            self._remove_user_dir(entry, user)
        return user

    def _remove_user_dir(self, entry: AssignEntry, user: VUser) -> None:
        """Remove a deleted user's directory, its Maildir last (a vdeluser killed meanwhile
        leaves what vadduser replaces and vdeluser finishes; gone over again while a delivery
        that found the user just before writes into it), then give back its slot. The caller
        has made sure no other user lives in it (:meth:`_lived_in`)."""
        remove_inside_until_gone(entry.dir, user.dir, last="Maildir")
        _, bucket = dircontrol.split_bucket(os.path.dirname(user.dir))
        with self._dir_lock(entry.dir, entry.uid, entry.gid):
            dircontrol.release(entry.dir, bucket, entry.uid, entry.gid)

    @staticmethod
    def _is_catchall(entry: AssignEntry, user: VUser) -> bool:
        try:
            target = catchall.read(entry.dir)
        except VpopmailError:
            return False
        return target in (user.dir, f"{user.name}@{entry.real_domain}")

    def modify_users(self, entry: AssignEntry, names: list[str],
                     change: Callable[[VUser], VUser], index: bool = True) -> list[VUser]:
        """Apply ``change`` to the current records of ``names`` and store them; returns the new
        records. With the cdb backend this happens under its lock, so concurrent commands that
        change different fields of one user (vpasswd, vmoduser -q) never undo each other;
        ``change`` must be quick (hash passwords before)."""
        with self.domain_lock(entry):
            return self.backend.modify_users(entry, names, change, index)

    def set_password(self, address: str, password: str, encrypted: bool = False,
                     honour_flag: bool = False) -> VUser:
        """Set a new password (or, with ``encrypted``, a ready hash)."""
        user, entry = self.get_user(address)
        if honour_flag and self.effective_flags(user, entry) & flags.NO_PASSWD_CHNG:
            raise IllegalUsername(f"{user.name}@{entry.real_domain} may not change its password")
        new = self.with_password(user, password, encrypted)
        self.modify_users(entry, [user.name], lambda u: u.copy(passwd=new.passwd, clear=new.clear))
        return user

    def with_password(self, user: VUser, password: str, encrypted: bool = False) -> VUser:
        """``user`` with a new password hash (and clear copy when configured); an empty
        clear-text password, which no login takes, is refused (an empty hash is "no
        password", as ``vadduser -n`` makes it)."""
        if encrypted:
            if ":" in password:
                raise BadChar("':' in an encrypted password")
            return user.copy(passwd=_check_text(password, PasswdTooLong, MAX_PASSWD), clear="")
        if not password:
            raise BadInput("an empty password: no login takes one")
        password = _check_text(password, PasswdTooLong, MAX_PASSWD)
        clear = password if self.config.passwords_clear_passwords else ""
        return user.copy(passwd=hash_password(password, self.config.passwords_scheme),
                         clear=clear)

    def set_quota(self, address_or_domain: str, quota: str) -> list[VUser]:
        """Set the quota of one user, or of every user of a domain (no ``@``)."""
        text = self.quota_string(quota)
        if not any(c in address_or_domain for c in "@%"):
            users, entry = self.list_users(address_or_domain)
        else:
            user, entry = self.get_user(address_or_domain)
            users = [user]
        with self.domain_lock(entry):
            changed = self.modify_users(entry, [u.name for u in users],
                                        lambda u: u.copy(quota=text))
            for user in changed:
                self.update_maildirsize(user, entry)
        return changed

    def update_maildirsize(self, user: VUser, entry: AssignEntry) -> None:
        """Rewrite ``maildirsize`` for the user's quota from a fresh count (none for NOQUOTA),
        with the domain owner's ids: the Maildir is the owner's, and a symlink it planted
        there must not let a root admin command write elsewhere."""
        maildir = os.path.join(user.dir, "Maildir")
        with self.domain_lock(entry), OwnerIds(entry.uid, entry.gid):
            try:
                try:
                    os.unlink(os.path.join(maildir, "maildirsize"))
                except FileNotFoundError:
                    pass
                if has_quota(user.quota) and os.path.isdir(maildir):
                    write_maildirsize(maildir, user.quota, scan_usage(maildir), entry.uid,
                                      entry.gid)
            except OSError as exc:
                raise CouldNotUpdateFile(f"{maildir}/maildirsize: {exc.strerror}") from None

    def iter_targets(self, target: str) -> Iterable[tuple[VUser, AssignEntry]]:
        """The users an admin command names: one address, or every user of a domain."""
        if any(c in target for c in "@%"):
            yield self.get_user(target)
            return
        users, entry = self.list_users(target)
        for user in users:
            yield user, entry
