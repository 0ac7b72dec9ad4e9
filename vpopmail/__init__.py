"""pyvpopmail: vpopmail's virtual-domain mail library for qmail, in Python."""
import _imp
import marshal
import posix
import sys
from _frozen_importlib import ModuleSpec
from _frozen_importlib_external import MAGIC_NUMBER

__version__ = "0.1.0"
#: The C release whose behaviour and formats this follows.
VPOPMAIL_COMPAT = "5.4.33"
#: the top-level packages of pyvpopmail (what packaging/install copies)
PACKAGES = ("vpopmail", "auth", "maildir", "delivery")

TYPE_CHECKING = False  # the typing idiom without importing typing (hot path)
if TYPE_CHECKING:
    from collections.abc import Mapping, MutableMapping, Sequence
    from importlib.abc import Loader
    from types import ModuleType
else:
    Loader = object  # the interface BytecodeFinder offers; importlib.abc loads typing (ms)


def environ_bytes() -> "MutableMapping[bytes, bytes]":
    """The environment, to read and to change for the programs we run: ``os.environb`` once
    ``os`` is loaded (the server, the admin commands, the tests), else ``posix.environ``, the
    dict ``os.environb`` is made from. The hot paths never import ``os`` (vpopmail.fsutil)."""
    os = sys.modules.get("os")
    if os is None:
        return posix.environ
    environ: MutableMapping[bytes, bytes] = os.environb
    return environ


def environ_text(source: "Mapping[bytes, bytes] | None" = None) -> dict[str, str]:
    """A copy of the environment (or of ``source``'s variables) as text, decoded as
    ``os.environ`` decodes it, without an entry of an empty name (``=x``: execve of it fails;
    the server's workers skip it too). Read from ``posix.environ``, the very dict
    ``os.environb`` wraps (a third of the cost of going through that wrapper's mapping
    methods)."""
    encoding, errors = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()
    return {name.decode(encoding, errors): value.decode(encoding, errors)
            for name, value in (posix.environ if source is None else source).items() if name}


def getenv(name: str) -> str | None:
    """One variable of the environment as text (``os.environ.get``), nothing else decoded."""
    encoding, errors = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()
    value = posix.environ.get(name.encode(encoding, errors))
    return None if value is None else value.decode(encoding, errors)


def restore_environ() -> None:
    """Undo the interpreter's C-locale coercion (PEP 538) in the environment, so that the
    programs we run (vchkpw's next program, .qmail programs, qmail-inject) get the environment
    we were given, as C vpopmail's do. Under the C or POSIX locale (qmail-local and qmail-popup
    set none) Python sets ``LC_CTYPE=C.UTF-8`` before any Python code runs, whatever -I says;
    the environment this process was started with is read back from /proc/self/environ.
    The bin/ wrappers call this first."""
    environ = environ_bytes()
    if b"LC_CTYPE" not in environ:
        return
    try:
        with open("/proc/self/environ", "rb") as fh:
            given = fh.read().split(b"\0")
    except OSError:  # no /proc: left as it is
        return
    original = next((entry[9:] for entry in given if entry.startswith(b"LC_CTYPE=")), None)
    # posix.environ is a plain dict: the C environment (what a child started without an
    # environment of its own inherits) is changed too
    if original is None:
        del environ[b"LC_CTYPE"]
        posix.unsetenv(b"LC_CTYPE")
    else:
        environ[b"LC_CTYPE"] = original
        posix.putenv(b"LC_CTYPE", original)


class BytecodeFinder(Loader):
    """Our own modules straight from the bytecode packaging/install compiled, for the bin/
    wrappers (:func:`use_bytecode`): the standard path finder's search of sys.path and its
    generic steps cost some 30 us more per module, about 0.7 ms of a delivery's twenty. The
    bytecode is used only while it matches its source (the mtime and size recorded in it, the
    standard loader's check); a missing or stale one, and every module not ours, is left to the
    standard finders."""

    def __init__(self, library: str) -> None:
        self.library = library
        self.suffix = f".{sys.implementation.cache_tag}.pyc"

    def find_spec(self, name: str, path: "Sequence[str] | None" = None,
                  target: "ModuleType | None" = None) -> ModuleSpec | None:
        if name.partition(".")[0] not in PACKAGES:
            return None
        directory, _, leaf = f"{self.library}/{name.replace('.', '/')}".rpartition("/")
        for source, cached in ((f"{directory}/{leaf}.py",
                                f"{directory}/__pycache__/{leaf}{self.suffix}"),
                               (f"{directory}/{leaf}/__init__.py",
                                f"{directory}/{leaf}/__pycache__/__init__{self.suffix}")):
            data = fresh_bytecode(source, cached)
            if data is not None:
                break
        else:
            return None
        package = source.endswith("/__init__.py")
        spec = ModuleSpec(name, self, origin=source, loader_state=data, is_package=package)
        spec.has_location = True
        spec.cached = cached
        if package:
            spec.submodule_search_locations = [source.rpartition("/")[0]]
        return spec

    def create_module(self, spec: ModuleSpec) -> None:
        """The default module object."""

    def exec_module(self, module: "ModuleType") -> None:
        spec = module.__spec__
        assert spec is not None and spec.origin is not None  # made by find_spec
        code = marshal.loads(memoryview(spec.loader_state)[16:])
        # the file names in a code object are those it was compiled under (the source tree's,
        # or the install's staging directory): the standard loader's fix, in C
        getattr(_imp, "_fix_co_filename")(code, spec.origin)
        exec(code, module.__dict__)


def fresh_bytecode(source: str, cached: str) -> bytes | None:
    """The contents of ``cached``, a timestamp .pyc of this interpreter, if it records
    ``source``'s mtime and size; else None."""
    try:
        fd = posix.open(cached, posix.O_RDONLY | posix.O_CLOEXEC)
    except OSError:
        return None
    try:
        data = posix.read(fd, posix.fstat(fd).st_size)
        st = posix.stat(source)
    except OSError:
        return None
    finally:
        posix.close(fd)
    stamp = (int(st.st_mtime) & 0xFFFFFFFF, st.st_size & 0xFFFFFFFF)
    header = (data[:4], data[4:8], int.from_bytes(data[8:12], "little"),
              int.from_bytes(data[12:16], "little"))
    return data if header == (MAGIC_NUMBER, bytes(4), *stamp) else None


def use_bytecode() -> None:
    """Import the rest of pyvpopmail through a :class:`BytecodeFinder` of the library this
    package was imported from. The bin/ wrappers call this second."""
    library = __file__.rpartition("/")[0].rpartition("/")[0]
    if not any(isinstance(finder, BytecodeFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, BytecodeFinder(library))
