"""execnet's RSync semantics on top of :class:`execpool.RSync` (``execnet.RSync`` under compat).

What differs from the native class, as execnet 2.1.2 does it:

* ``send()`` syncs the targets added since the last ``send()`` and then forgets them: a
  second ``send()`` without a new ``add_target()`` raises :class:`OSError` (with
  ``raises=False`` it returns None);
* ``callback(command, length, channel)`` is called with ``("list", bytes, channel)``
  once per target when its receiver has said what it needs (the total size of those
  files) and ``("ack", bytes, channel)`` for each of them once it is up to date;
* an absolute symlink that names a path inside the source becomes an absolute link to
  that path in the target directory;
* a file sent is reported as ``GATEWAY <= RELPATH`` when ``verbose``.

Everything else -- delta transfer, ``delete=``, the receiver's link safety -- is execpool's.
"""

from __future__ import annotations

from typing import Any

from .._shipped.channel import Channel
from ..rsync import RSync as _NativeRSync


class RSync(_NativeRSync):
    """``execnet.RSync``: see the module docstring for how it differs from ``execpool.RSync``."""

    _consume_targets = True
    _rooted_absolute_links = True

    def _listed(self, ch: Channel, total: int) -> None:
        if self._callback is not None:
            self._callback("list", total, ch)

    def _file_synced(self, ch: Channel, rel: str, size: int, sent: bool) -> None:
        if self._callback is not None:
            self._callback("ack", size, ch)
        if sent:
            self._report_send_file(ch.gateway, rel)

    def _report_send_file(self, gateway: Any, rel: str) -> None:
        if self._verbose:
            print("%s <= %s" % (gateway, rel))
