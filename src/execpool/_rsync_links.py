"""Which symlinks of an RSync source stay inside the tree at the target (master side only).

The master decides before anything is sent: a link whose target, resolved in the tree
the listing makes at the target (through the tree's other links, as the OS would), can
leave that tree is refused (``links="safe"``).  An absolute link that names a path in
the source is first rewritten by :meth:`RSync._walk <execpool.RSync>`: to a relative
link (kind ``"l"``) or, for execnet's behaviour, to a link the receiver anchors at its
root (kind ``"r"``: the link's text is a path from the target's root).
"""

from __future__ import annotations

from collections.abc import Sequence


def inside(link: str, roots: Sequence[str]) -> str | None:
    """The path from the source root that the absolute ``link`` names ("" for the root
    itself), or None: not absolute, elsewhere, or with "." or ".." components (taken
    lexically they could name another place than the OS would resolve)."""
    if not link.startswith("/"):
        return None
    for root in roots:
        if link == root or link.startswith(root.rstrip("/") + "/"):
            parts = [p for p in link[len(root) :].split("/") if p]
            if any(p in (".", "..") for p in parts):
                return None
            return "/".join(parts)
    return None


#: How many links one resolution may pass through before it counts as a loop (as the OS's ELOOP).
MAX_LINK_HOPS = 40


def escaping_links(entries: Sequence[tuple[str, str, int, int, int, str | None]]) -> set[str]:
    """The links of ``entries`` (kinds "l" and "r") whose target, resolved in the tree the entries make at the
    target (through the tree's other links, as the OS would), can leave that tree; also
    absolute links and loops.  Refusing a link changes the tree, so this repeats until no
    other link is refused.  Names the tree does not have resolve lexically."""
    kinds = {e[0]: e[1] for e in entries}
    rooted = {e[0] for e in entries if e[1] == "r"}  # anchored at the root, whatever their directory
    bad: set[str] = set()
    while True:
        links = {e[0]: e[5] or "" for e in entries if e[1] in ("l", "r") and e[0] not in bad}
        new = {
            rel
            for rel, target in links.items()
            if _resolve("" if rel in rooted else rel.rpartition("/")[0], target, links, kinds, rooted) is None
        }
        if not new:
            return bad
        bad |= new


def _resolve(
    base: str, target: str, links: dict[str, str], kinds: dict[str, str], rooted: set[str] | None = None
) -> list[str] | None:
    """Where ``target`` (a link's content, relative to directory ``base``) leads, as path
    components under the root; None if it leaves the root, is absolute or loops.  A link
    in ``rooted`` is followed from the root."""
    hops = [MAX_LINK_HOPS]
    rooted = rooted or set()

    def walk(stack: list[str], text: str) -> list[str] | None:
        if text.startswith("/"):
            return None
        stack = list(stack)
        for part in text.split("/"):
            if part in ("", "."):
                continue
            if part == "..":
                if not stack:
                    return None
                stack.pop()
                continue
            path = "/".join([*stack, part])
            if path in links:
                hops[0] -= 1
                if hops[0] < 0:
                    return None
                found = walk([] if path in rooted else stack, links[path])
                if found is None:
                    return None
                stack = found
            elif kinds.get(path) == "f":
                return [*stack, part]  # nothing resolves through a file (ENOTDIR)
            else:
                stack.append(part)  # a directory, or a name the tree does not have
        return stack

    return walk(base.split("/") if base else [], target)
