"""What a new worker interpreter is sent at start-up, and how it unpacks it.

A worker is started as ``PYTHON -c BOOTSTRAP``.  ``BOOTSTRAP`` is a few lines
that check the interpreter's version, read an 8-byte header and two blobs from
stdin -- the zlib-compressed, marshalled *payload* and the worker's
*configuration* (a Python literal) -- and run the payload's loader.  The
loader registers the shipped modules (``SHIPPED``) as a package named
``_execpool`` in the worker's ``sys.modules`` -- a name that cannot clash
with an installed execpool -- and calls ``_execpool._worker.main(CONFIG)``.

The payload carries each module's source and, for workers whose bytecode
magic number equals the master's, the compiled code objects: a worker of the
same Python version skips compiling (about 12 ms), any other compiles the
source.  Only core types travel in the marshal format, whose encoding of them
every CPython 3.8+ reads; code objects are nested as opaque bytes.

The same source files run on both sides: on the master they are
``execpool._conn`` and friends, on a worker ``_execpool._conn``.  Nothing is
installed or written on the worker.
"""

from __future__ import annotations

import functools
import importlib.util
import marshal
import zlib
from pathlib import Path
from typing import Any

#: Modules shipped to workers, in import order.  Each is stdlib-only and runs on CPython 3.8+.
SHIPPED = ("_errors", "_trace", "_frames", "_serial", "_channel", "_conn", "_worker")

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

# Runs in the worker with P = (this source, sources, order, magic, marshalled code objects).
_LOADER = """\
import sys, marshal
from _frozen_importlib_external import MAGIC_NUMBER
_, SOURCES, ORDER, MAGIC, CODES = P
CODES = marshal.loads(CODES) if MAGIC == MAGIC_NUMBER else {}
M = type(sys)
pkg = M("_execpool")
pkg.__path__ = []
pkg.__package__ = "_execpool"
pkg._sources = SOURCES
sys.modules["_execpool"] = pkg
for name in ORDER:
    m = M("_execpool." + name)
    m.__package__ = "_execpool"
    m.__file__ = "<execpool %s>" % name
    sys.modules[m.__name__] = m
    setattr(pkg, name, m)
    code = CODES.get(name) or compile(SOURCES[name], m.__file__, "exec")
    exec(code, m.__dict__)
del M, m, name, code, CODES, P
sys.modules["_execpool._worker"].main(CONFIG)
"""


@functools.lru_cache(maxsize=1)
def payload() -> bytes:
    """The compressed payload: loader, shipped sources, and their bytecode for this
    interpreter's magic number (used by workers of the same version, compiled from
    source by the others).  Built once per process."""
    here = Path(__file__).parent
    sources = {name: (here / (name + ".py")).read_text(encoding="utf-8") for name in SHIPPED}
    codes = {name: compile(text, "<execpool %s>" % name, "exec") for name, text in sources.items()}
    packed = (_LOADER, sources, SHIPPED, importlib.util.MAGIC_NUMBER, marshal.dumps(codes))
    return zlib.compress(marshal.dumps(packed), 6)


def bootstrap_input(config: dict[str, Any]) -> bytes:
    """The bytes to write to a new worker's stdin: header, payload, configuration."""
    blob = payload()
    conf = repr(config).encode("utf-8")
    return len(blob).to_bytes(4, "big") + len(conf).to_bytes(4, "big") + blob + conf
