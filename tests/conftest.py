"""Shared fixtures: tiny models, tiny suite files, a CLI runner and plugin isolation."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402
from click.testing import CliRunner  # noqa: E402

from diffbench import plugins  # noqa: E402
from diffbench.cli import main  # noqa: E402
from tests.helpers import Recorder, make_model, write_suite  # noqa: E402

# Tiny models gain nothing from intra-op threads, and on a busy 2-core machine OpenMP threads
# that contend with other processes make every small op up to 100x slower.
torch.set_num_threads(1)

# A shell starts a background job with SIGINT ignored, and Python then installs no KeyboardInterrupt
# handler (nor do the child processes it starts): the Ctrl-C tests need what a terminal gives, so the
# test process takes Python's default handler back (children then start with the default disposition).
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """No test leaks plugins into another, sees plugins of other installed packages, reads
    DIFFBENCH_PLUGINS or touches ~/.cache: each test gets a fresh plugin set with the built-ins."""
    monkeypatch.delenv(plugins.ENV_VAR, raising=False)
    monkeypatch.delenv(plugins.ALLOW_ENV_VAR, raising=False)
    monkeypatch.setenv("DIFFBENCH_CACHE", str(tmp_path / "default-cache"))
    modules = set(sys.modules)
    with plugins.using():
        yield
    for name in set(sys.modules) - modules:
        if name.startswith("diffbench_file_plugin_"):
            del sys.modules[name]


@pytest.fixture
def register_plugin():
    """``register_plugin(obj)`` registers a plugin object for this test only."""
    registered = []

    def register(obj, name: str | None = None):
        plugins.pm.register(obj, name=name)
        registered.append(obj)
        return obj

    yield register
    for obj in registered:
        if plugins.pm.is_registered(obj):
            plugins.pm.unregister(obj)


@pytest.fixture
def recorder_model():
    return make_model(Recorder(dim=2, num_classes=3), num_classes=3, dim=2)


@pytest.fixture
def suite_file(tmp_path):
    """``suite_file(**keys)`` writes a tiny suite into tmp_path and returns its path."""

    def write(name: str = "tiny.toml", **keys) -> Path:
        return write_suite(tmp_path / name, **keys)

    return write


@pytest.fixture
def cli():
    """``cli(*args, env=None)`` invokes the diffbench command in-process and returns the click Result."""
    runner = CliRunner()

    def invoke(*args, env=None):
        return runner.invoke(main, [str(a) for a in args], env=env, catch_exceptions=False)

    return invoke
