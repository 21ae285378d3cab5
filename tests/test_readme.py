"""The README's plugin example and commands stay true."""

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from diffbench import plugins
from diffbench.cli import main

README = Path(__file__).resolve().parent.parent / "README.md"


@pytest.mark.slow
def test_readme_plugin_example_runs(tmp_path):
    text = README.read_text()
    code = re.search(r"```python\n(# even_t.py\n.*?)```", text, re.S).group(1)
    plugin = tmp_path / "even_t.py"
    plugin.write_text(code)
    suite = tmp_path / "tiny.toml"
    suite.write_text(
        'datasets = ["spirals[n_train=200,n_test=40]"]\ndenoisers = ["mlp[width=16,depth=1]"]\n'
        'trials = [2]\ndevices = ["cpu"]\nrepeats = 1\n[train]\nsteps = 20\n'
    )
    try:
        result = CliRunner().invoke(
            main,
            [
                "--plugin",
                str(plugin),
                "run",
                "--suite",
                str(suite),
                "-e",
                "even-t[stride=[2,10]]",
                "--out",
                str(tmp_path / "run"),
                "--cache",
                str(tmp_path / "cache"),
                "--no-plots",
            ],
        )
        assert result.exit_code == 0, result.output
        import pandas as pd

        frame = pd.read_parquet(tmp_path / "run" / "results.parquet")
        frame = frame[frame["scenario"] == "offline"]
        assert list(frame["estimator_label"]) == ["even-t", "even-t[stride=10]"]
        assert (frame["status"] == "ok").all()
        assert (frame["nfe_per_sample"] == 4).all()
    finally:
        for module in list(plugins.pm.get_plugins()):
            if getattr(module, "__file__", "") == str(plugin.resolve()):
                plugins.pm.unregister(module)


def test_readme_test_command_is_what_ci_runs():
    text = README.read_text()
    ci = (README.parent / ".ci" / "run").read_text()
    command = re.search(r"Run the tests:\n\n```bash\n(.*?)\n```", text, re.S).group(1)
    assert command in ci
