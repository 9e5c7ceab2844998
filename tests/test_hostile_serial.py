"""Hostile inputs for the channel-data serializer and the connection (the hardening issue).

Each test builds the smallest input that crashed, froze or exhausted a process before the
fix and runs the subject in a child interpreter under ``RLIMIT_AS`` and ``RLIMIT_CPU``
(and a wall-clock timeout), so that a regression fails with a message here instead of
freezing or killing the test run.  The time and memory bounds are hang guards, generous on
purpose, not benchmarks.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import textwrap

import pytest

MIB = 1024 * 1024
#: What one child may use: address space, CPU seconds, wall-clock seconds.
CHILD_AS = 1024 * MIB
CHILD_CPU = 20
CHILD_WALL = 60
#: The bounds a fixed loader must stay within.
MAX_CPU = 5.0
MAX_RSS = 512 * MIB

SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")

_PRELUDE = """
import json, resource, sys, time
sys.path.insert(0, %r)
def _report(**fields):
    ru = resource.getrusage(resource.RUSAGE_SELF)
    fields["cpu"] = ru.ru_utime + ru.ru_stime
    fields["rss"] = ru.ru_maxrss * 1024
    sys.stdout.write("RESULT " + json.dumps(fields) + "\\n")
def _outcome(fn):
    t0 = time.perf_counter()
    try:
        value = fn()
    except BaseException as exc:
        _report(error=type(exc).__name__, message=str(exc)[:2000], wall=time.perf_counter() - t0)
    else:
        _report(error=None, value=repr(value)[:200], wall=time.perf_counter() - t0)
"""


def _limits() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (CHILD_AS, CHILD_AS))
    resource.setrlimit(resource.RLIMIT_CPU, (CHILD_CPU, CHILD_CPU))


def run_child(body: str) -> dict:
    """Run ``body`` (which calls ``_outcome(fn)``) in a limited child; return its report."""
    code = _PRELUDE % SRC + textwrap.dedent(body)
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=CHILD_WALL,
            preexec_fn=_limits,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the child did not finish within %d s (a hang)" % CHILD_WALL)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        pytest.fail(
            "the child died (exit status %d; a negative one is a signal: -11 is a segfault, "
            "-9/-24 a memory or CPU limit): %s" % (proc.returncode, proc.stderr[-2000:])
        )
    result: dict = json.loads(lines[-1][len("RESULT ") :])
    return result


def assert_refused(result: dict, *words: str) -> None:
    assert result["error"] == "DataFormatError", result
    for word in words:
        assert word in result["message"], result
    assert result["cpu"] < MAX_CPU, "took %.1f s of CPU" % result["cpu"]
    assert result["rss"] < MAX_RSS, "used %.0f MiB" % (result["rss"] / MIB)
    assert len(result["message"]) < 1000, "an unbounded error message: %d characters" % len(result["message"])


# -- error messages never format a peer's value without a bound (bullet 3) ---------------------


def test_a_refused_persistent_id_that_is_a_dag_of_shared_lists_is_described_not_repred():
    # 40 lists, each holding the previous one twice: repr() would be 2**40 items long.
    result = run_child(
        """
        from execpool._shipped.serial import loads
        # list_i = [list_{i-1}, list_{i-1}], memo index i
        ops = [b"\\x80\\x05", b"]\\x94"]
        for i in range(1, 40):
            ops.append(b"](h" + bytes([i - 1]) + b"h" + bytes([i - 1]) + b"e\\x94")
        ops.append(b"Q.")
        data = b"".join(ops)
        assert len(data) < 6000
        _outcome(lambda: loads(data))
        """
    )
    assert_refused(result, "persistent reference", "list of length 2")


def test_a_refused_global_name_is_cut_short_in_the_message():
    result = run_child(
        """
        from execpool._shipped.serial import loads
        data = b"\\x80\\x05c" + b"m" * 1000000 + b"\\n" + b"n" * 1000000 + b"\\n."
        _outcome(lambda: loads(data))
        """
    )
    assert_refused(result, "refused to load")


def test_a_malformed_message_error_quotes_a_bounded_text():
    # A FLOAT opcode's error from CPython quotes the whole line it could not parse.
    result = run_child(
        """
        from execpool._shipped.serial import loads
        data = b"\\x80\\x05F" + b"x" * 2000000 + b"\\n."
        _outcome(lambda: loads(data))
        """
    )
    assert_refused(result, "malformed channel data")


# -- load() of a file that is not a dump (bullet 5) ----------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        b"\xff" * 8,  # a header declaring 2**64-1 bytes
        b"\x80" + b"\x00" * 7 + b"x",  # 2**63
        b"\x00\x00\x00\x00\x00\x00\x00\x05abcde",  # not pickle
        b"abc",  # a short header
        b"\x00\x00\x00\x00\x00\x00\x00\x10\x80\x05",  # a truncated body
        b"\x00\x00\x00\x00\x00\x00\x00\x03\x80\x05.",  # a pickle without a value
    ],
)
def test_load_of_bytes_that_are_not_a_dump_raises_data_format_error(content):
    result = run_child(
        """
        import io
        from execpool import compat
        _outcome(lambda: compat.load(io.BytesIO(%r)))
        """
        % (content,)
    )
    assert_refused(result, "offset 0")


def test_load_names_the_offset_of_the_bad_object():
    import io

    from execpool import DataFormatError, compat

    f = io.BytesIO()
    compat.dump(f, [1, 2])
    good = f.tell()
    f.write(b"\x00" * 7 + b"\x02" + b"zz")
    f.seek(0)
    assert compat.load(f) == [1, 2]
    with pytest.raises(DataFormatError, match="offset %d" % good):
        compat.load(f)
