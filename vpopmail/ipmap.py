"""The domain of a login without one: ``$VPOPMAIL_DOMAIN``, the IP map, the default domain.

``~vpopmail/etc/ip_alias_map`` (what ``vipmap`` edits) maps a local IP address to a domain, one
``IP domain`` pair per line, so that each of a host's addresses can serve its own domain to
users who log in with a bare name. C vpopmail needed ``--enable-ip-alias-domains`` for it; here
the map is in force whenever the file exists. Hot-path safe: lean imports only.
"""
import errno
import os

from vpopmail.config import Config
from vpopmail.errors import BadInput
from vpopmail.fsutil import FileLock, atomic_write, read_regular

TYPE_CHECKING = False  # the typing idiom without importing typing (hot path)
if TYPE_CHECKING:
    from collections.abc import Callable

MAP_FILE = "ip_alias_map"
DEFAULT_FILE = "defaultdomain"
ENV_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.@-")
MAX_DOMAIN = 96


def map_path(config: Config) -> str:
    return os.path.join(config.home, "etc", MAP_FILE)


def read_map(config: Config) -> list[tuple[str, str]]:
    """The (ip, domain) pairs of the map, in file order; no file (or none of ours): none."""
    data = _trusted(map_path(config))
    pairs = []
    for line in data.decode("utf-8", "replace").splitlines():
        fields = line.split()
        if len(fields) >= 2:
            pairs.append((fields[0], fields[1]))
    return pairs


def _trusted(path: str) -> bytes:
    """The contents of the etc/ file ``path`` if it is a regular file (not through a link,
    never waiting on a FIFO, at most 1 MiB) of root's or this process's; else nothing. In a
    root installation the vpopmail user may add files to etc/: a map or default domain it
    made where there was none is not root's to believe (nor a FIFO or /dev/zero to read)."""
    try:
        data, st = read_regular(path)
    except FileNotFoundError:
        return b""
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EINVAL, errno.EFBIG):
            return b""
        raise
    return data if st.st_uid in (0, os.geteuid()) else b""


def _first_line(path: str) -> str:
    return _trusted(path).decode("utf-8", "replace").partition("\n")[0].strip()


def _is_local(config: Config, domain: str) -> bool:
    """Listed in qmail's control/locals: a domain of the host itself, not a virtual one."""
    try:
        with open(os.path.join(config.qmail_dir, "control", "locals"), encoding="latin-1") as fh:
            return any(line.strip().lower() == domain for line in fh)
    except FileNotFoundError:
        return False


def default_domain(config: Config, environ: dict[str, str], local_ip: str = "") -> str:
    """The domain for a bare user name, vpopmail's order: ``$VPOPMAIL_DOMAIN`` (unsafe
    characters become ``_``), the IP map entry of ``local_ip`` (an IPv4-mapped ``::ffff:``
    prefix is ignored) unless qmail serves that domain as a local one,
    ``users.default_domain``, then the first line of ``etc/defaultdomain``; else ``""``."""
    value = environ.get("VPOPMAIL_DOMAIN", "")
    if value:
        return "".join(c if c in ENV_CHARS else "_" for c in value[:MAX_DOMAIN]).lower()
    if local_ip:
        if local_ip.lower().startswith("::ffff:") and "." in local_ip:
            local_ip = local_ip[7:]
        for ip, domain in read_map(config):
            if ip == local_ip:
                domain = domain.lower()
                if not _is_local(config, domain):
                    return domain
                break
    configured = config.users_default_domain
    if configured:
        return configured.lower()
    return _first_line(os.path.join(config.home, "etc", DEFAULT_FILE)).lower()


def check_ip(ip: str) -> str:
    """``ip`` in the form tcpserver gives TCPLOCALIP (IPv6 lower case, the longest run of
    zero groups shortened: ``FD00:0:0::2`` is ``fd00::2``; an IPv4-mapped address as its IPv4
    one, as :func:`default_domain` looks it up), which the map is matched against as text;
    BadInput unless it is one IPv4 or IPv6 address (no %scope, no blanks)."""
    import ipaddress

    try:
        if not set(ip) <= set("0123456789abcdefABCDEF.:"):
            raise ValueError(ip)
        address = ipaddress.ip_address(ip)
        mapped = getattr(address, "ipv4_mapped", None)  # looked up as IPv4 (default_domain)
        return str(mapped) if mapped else address.compressed
    except ValueError:
        raise BadInput(f"{ip!r} is not an IP address") from None


def _spelled(ip: str) -> str:
    """A stored address as :func:`check_ip` writes it (an older entry may be spelled
    otherwise); text that is no address as it is."""
    try:
        return check_ip(ip)
    except BadInput:
        return ip


def change_map(config: Config, ip: str, domain: str, add: bool) -> bool:
    """Add (``add``) or delete the pair ``ip domain`` (``ip`` as :func:`check_ip` returns
    it; a stored entry matches in any spelling); an add replaces an equal pair. Return
    whether the map changed. The map and its lock belong to who writes them (vipmap and
    vpopmaild run as root): it decides the domain of root's bare-name logins, and in a root
    installation the vpopmail user may add files to etc/ but replace none of root's."""
    def edit(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
        kept = [pair for pair in pairs if (_spelled(pair[0]), pair[1]) != (ip, domain)]
        return kept + [(ip, domain)] if add else kept

    return _rewrite(config, edit)


def forget_domains(config: Config, domains: set[str]) -> bool:
    """Delete every pair naming one of ``domains`` (vdeldomain: a map left pointing at a
    deleted domain would steer bare-name logins there again once it is added anew). Only a
    map that names one is rewritten, so a map the caller may not write is refused only then.
    Return whether the map changed."""
    if not any(domain in domains for _, domain in read_map(config)):
        return False
    return _rewrite(config, lambda pairs: [pair for pair in pairs if pair[1] not in domains])


def _rewrite(config: Config, edit: "Callable[[list[tuple[str, str]]], list[tuple[str, str]]]"
             ) -> bool:
    """Replace the map's pairs by what ``edit`` makes of them, under its lock; whether they
    changed."""
    path = map_path(config)
    with FileLock(path + ".lock", config.locks_timeout):
        pairs = read_map(config)
        kept = edit(pairs)
        if kept == pairs:
            return False
        text = "".join(f"{a} {b}\n" for a, b in kept)
        atomic_write(path, text.encode(), 0o644, sync=config.delivery_file_sync)
    return True
