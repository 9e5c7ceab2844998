"""Shared fixtures: real worker interpreters of every CPython 3.8+ on this machine.

Plain helpers that tests import live in ``_helpers.py``, not here.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

import pytest

import execpool
from _helpers import INTERPRETERS
from sshd import SshServer, sshd_missing_reason

# Bytecode that workers of other Python versions hand back goes to a cache of this test run,
# never into the user's ~/.cache (subprocesses started by the tests inherit it too).
os.environ["EXECPOOL_CACHE_DIR"] = tempfile.mkdtemp(prefix="execpool-test-cache-")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--long",
        action="store_true",
        help="also run the long variants (tests marked slow: long fuzzing, fault repeats, leak and soak runs)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--long"):
        return
    skip = pytest.mark.skip(reason="a long variant: run with --long")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def long_run(request: pytest.FixtureRequest) -> bool:
    """True under --long: tests that scale (repeats, cycles, examples) use their long sizes."""
    return bool(request.config.getoption("--long"))


def pytest_report_header(config: pytest.Config) -> str:
    found = ", ".join("%s (%s)" % (i.short_version, i.path) for i in INTERPRETERS) or "none"
    return "execpool worker interpreters: " + found


@pytest.fixture(params=INTERPRETERS, ids=lambda i: "py" + i.short_version)
def interpreter(request: pytest.FixtureRequest) -> execpool.Interpreter:
    """Each local CPython 3.8+ in turn."""
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def gw() -> Iterator[execpool.Gateway]:
    """A popen gateway on the interpreter running the tests."""
    group = execpool.Group()
    gateway = group.makegateway("popen")
    yield gateway
    group.terminate(timeout=5)


@pytest.fixture
def anygw(interpreter: execpool.Interpreter) -> Iterator[execpool.Gateway]:
    """A popen gateway on each local CPython 3.8+ in turn."""
    group = execpool.Group()
    gateway = group.makegateway(interpreter.spec)
    yield gateway
    group.terminate(timeout=5)


@pytest.fixture
def group() -> Iterator[execpool.Group]:
    g = execpool.Group()
    yield g
    g.terminate(timeout=5)


@pytest.fixture
def cleanup() -> Iterator[list[execpool.Pool]]:
    """Pools a test hands in here are terminated at its end, whatever happened."""
    pools: list[execpool.Pool] = []
    yield pools
    for pool in pools:
        pool.terminate()


@pytest.fixture(scope="session")
def sshd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    """A real OpenSSH server on 127.0.0.2-4 (aliases host-a, host-b, host-c), one per test process."""
    reason = sshd_missing_reason()
    if reason:
        if os.environ.get("CI"):
            pytest.fail("CI must run the ssh tests: " + reason)
        pytest.skip(reason)
    server = SshServer.start(tmp_path_factory.mktemp("sshd"))
    yield server
    server.stop()
