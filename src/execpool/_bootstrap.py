"""What a new worker interpreter is sent at start-up, and how it unpacks it.

A worker is started as ``PYTHON -c BOOTSTRAP``.  ``BOOTSTRAP`` is a few lines
that check the interpreter's version, read an 8-byte header and two blobs from
stdin -- the zlib-compressed, marshalled *payload* and the worker's
*configuration* (a Python literal) -- and run the payload's loader.  The
loader makes the modules of ``execpool/_shipped/`` importable as a package
named ``_execpool`` -- a name that cannot clash with an installed execpool --
through a finder on ``sys.meta_path``, so a module is compiled and run only
when something imports it, and calls ``_execpool.worker.main(CONFIG)``.

What is shipped is derived from the folder: every ``*.py`` file in
``_shipped/`` (its ``__init__`` is the master-side package marker and is not
sent).  ``tests/test_shipped.py`` checks that the folder imports nothing but
the standard library and itself, and uses no syntax newer than Python 3.8.

The payload carries each module's source and, for workers whose bytecode
magic number equals the master's, the compiled code objects: a worker of the
same Python version skips compiling (about 12 ms), any other compiles the
source.  Only core types travel in the marshal format, whose encoding of them
every CPython 3.8+ reads; code objects are nested as opaque bytes.

The same source files run on both sides: on the master they are
``execpool._shipped.connection`` and friends, on a worker
``_execpool.connection``.  Nothing is
installed or written on the worker.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import marshal
import os
import shutil
import zlib
from pathlib import Path
from typing import Any

#: The folder whose modules run inside every worker (stdlib-only, CPython 3.8+).
SHIPPED_DIR = Path(__file__).with_name("_shipped")

#: Exit status of the bootstrap on an interpreter older than 3.8.
EXIT_TOO_OLD = 97
#: Exit status of the bootstrap when stdin ended before the payload arrived.
EXIT_NO_PAYLOAD = 98

# Valid Python 2 syntax on purpose, so that an old interpreter reaches the version check.
BOOTSTRAP = (
    "import os,sys\n"
    "if sys.version_info<(3,8):\n"
    " sys.stderr.write('execpool: the worker interpreter is Python %%s; execpool needs CPython 3.8 or newer\\n'"
    "%%sys.version.split()[0]);sys.exit(%d)\n"
    "def r(n):\n"
    " b=b''\n"
    " while len(b)<n:\n"
    "  c=os.read(0,n-len(b))\n"
    "  if not c:sys.exit(%d)\n"
    "  b+=c\n"
    " return b\n"
    "h=r(8);import zlib,marshal\n"
    "P=marshal.loads(zlib.decompress(r(int.from_bytes(h[:4],'big'))))\n"
    "exec(P[0],{'CONFIG':eval(r(int.from_bytes(h[4:],'big'))),'P':P})\n"
) % (EXIT_TOO_OLD, EXIT_NO_PAYLOAD)

# Runs in the worker with P = (this source, sources, magic, marshalled code objects).
_LOADER = """\
import sys, marshal
from _frozen_importlib import ModuleSpec
from _frozen_importlib_external import MAGIC_NUMBER
_, SOURCES, MAGIC, CODES = P
try:
    CODES = marshal.loads(CODES) if MAGIC == MAGIC_NUMBER else {}
    if type(CODES) is not dict:
        CODES = {}
except Exception:  # a damaged cache entry: compile from source instead
    CODES = {}
COMPILED = {}
# compile() once before the hello: its first call in a process pays a one-time set-up (about
# a millisecond) that would otherwise delay the first remote_exec
CODE_TYPE = type(compile("", "", "exec"))


class ShippedFinder:
    @classmethod
    def find_spec(cls, fullname, path=None, target=None):
        if fullname.startswith("_execpool.") and fullname[10:] in SOURCES:
            return ModuleSpec(fullname, cls, origin="<execpool %s>" % fullname[10:])
        return None

    @staticmethod
    def create_module(spec):
        return None

    @staticmethod
    def exec_module(module):
        name = module.__name__[10:]
        module.__file__ = "<execpool %s>" % name
        code = CODES.get(name)
        if type(code) is not CODE_TYPE:
            code = COMPILED[name] = compile(SOURCES[name], module.__file__, "exec")
        exec(code, module.__dict__)


pkg = type(sys)("_execpool")
pkg.__path__ = []
pkg.__package__ = "_execpool"
pkg._sources = SOURCES
pkg._compiled = COMPILED
sys.modules["_execpool"] = pkg
sys.meta_path.insert(0, ShippedFinder)
del P
import _execpool.worker
_execpool.worker.main(CONFIG)
"""


@functools.lru_cache(maxsize=1)
def _sources() -> dict[str, str]:
    return {
        path.stem: path.read_text(encoding="utf-8")
        for path in sorted(SHIPPED_DIR.glob("*.py"))
        if path.stem != "__init__"
    }


@functools.lru_cache(maxsize=1)
def _sources_id() -> str:
    """Identifies this version of the shipped sources (bytecode caches are kept per version)."""
    h = hashlib.sha256()
    for name, text in sorted(_sources().items()):
        h.update(name.encode() + b"\0" + text.encode("utf-8") + b"\0")
    return h.hexdigest()[:16]


@functools.lru_cache(maxsize=16)
def payload(magic: bytes | None = None) -> bytes:
    """The compressed payload: loader, shipped sources, and bytecode for one magic number.

    The bytecode is this interpreter's own, or -- for ``magic`` of another CPython
    version -- the one a local worker of that version compiled earlier (see
    :func:`remember_bytecode`).  A worker whose magic number differs compiles the
    sources instead, so a wrong guess costs time, never correctness.
    """
    codes_blob = _cached_bytecode(magic) if magic not in (None, importlib.util.MAGIC_NUMBER) else None
    if codes_blob is None:
        magic = importlib.util.MAGIC_NUMBER
        codes = {name: compile(text, "<execpool %s>" % name, "exec") for name, text in _sources().items()}
        codes_blob = marshal.dumps(codes)
    packed = (_LOADER, _sources(), magic, codes_blob)
    return zlib.compress(marshal.dumps(packed), 6)


# -- bytecode of other Python versions ----------------------------------------------------
# A local (popen) worker of another version compiles the shipped sources once and hands the
# bytecode back in its hello; the master keeps it per magic number, in memory and in the
# user's cache directory, and which magic number each interpreter command has.  Only local
# workers are asked: a remote host could otherwise plant code for the next local worker.

_bytecode: dict[bytes, bytes] = {}
_magic_of: dict[str, bytes] = {}


def cache_dir() -> Path:
    """``$EXECPOOL_CACHE_DIR``, else ``$XDG_CACHE_HOME/execpool``, else ``~/.cache/execpool``."""
    explicit = os.environ.get("EXECPOOL_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "execpool"


def interpreter_key(cmd: list[str]) -> str:
    """Names a local interpreter command, including the binary's identity when it is a file."""
    exe = shutil.which(cmd[0]) if cmd else None
    ident = ""
    if exe:
        try:
            st = os.stat(exe)
            ident = "%s:%d:%d" % (os.path.realpath(exe), st.st_mtime_ns, st.st_size)
        except OSError:
            pass
    return hashlib.sha256(("\0".join(cmd) + "\0" + ident).encode()).hexdigest()[:24]


def _path(kind: str, name: str) -> Path:
    return cache_dir() / ("%s-%s-%s" % (_sources_id(), kind, name))


def _cached_bytecode(magic: bytes | None) -> bytes | None:
    if magic is None:
        return None
    blob = _bytecode.get(magic)
    if blob is None:
        try:
            blob = _path("code", magic.hex()).read_bytes()
        except OSError:
            return None
        _bytecode[magic] = blob
    return blob


def known_magic(key: str) -> bytes | None:
    """The magic number the interpreter ``key`` reported last time, if known."""
    magic = _magic_of.get(key)
    if magic is None:
        try:
            magic = bytes.fromhex(_path("magic", key).read_text().strip())
        except (OSError, ValueError):
            return None
        _magic_of[key] = magic
    return magic


def remember_bytecode(key: str, magic: bytes, blob: bytes) -> None:
    """Keep what a local worker compiled, for the next worker of that interpreter."""
    _magic_of[key] = magic
    _bytecode[magic] = blob
    payload.cache_clear()
    try:
        directory = cache_dir()
        directory.mkdir(parents=True, exist_ok=True)
        for path, data in ((_path("code", magic.hex()), blob), (_path("magic", key), magic.hex().encode())):
            tmp = path.with_name(path.name + ".%d.tmp" % os.getpid())
            tmp.write_bytes(data)
            os.replace(tmp, path)  # readers see the old file or the new one, never half of one
    except OSError:
        pass  # a cache that cannot be written only costs start-up time


def bootstrap_input(config: dict[str, Any], magic: bytes | None = None) -> bytes:
    """The bytes to write to a new worker's stdin: header, payload, configuration."""
    blob = payload(magic)
    conf = repr(config).encode("utf-8")
    return len(blob).to_bytes(4, "big") + len(conf).to_bytes(4, "big") + blob + conf
