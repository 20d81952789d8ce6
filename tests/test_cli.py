"""The console entry point and `python -m ageest`."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ageest import cli, paths

BIN = Path(sys.executable).parent


@pytest.mark.parametrize(
    "argv",
    [[str(BIN / "ageest"), "--help"], [sys.executable, "-m", "ageest", "--help"]],
    ids=["console-script", "python-m"],
)
def test_help_lists_every_subcommand(argv):
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=True).stdout
    for name in cli.SUBCOMMANDS:
        assert name in out


def test_every_subcommand_has_help(capsys):
    for name in cli.SUBCOMMANDS:
        with pytest.raises(SystemExit) as exc:
            cli.main([name, "--help"])
        assert exc.value.code == 0
        assert name in capsys.readouterr().out


def test_info_json_reports_versions_and_paths(capsys):
    assert cli.main(["info", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["versions"]["ageest"]
    assert report["paths"]["root"] == str(paths.ROOT)


def test_unknown_subcommand_is_an_error(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["no-such-command"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_output_root_default_and_override(tmp_path):
    assert paths.output_root("smoke") == paths.RESULTS / "smoke"
    assert paths.output_root("smoke", str(tmp_path)) == tmp_path.resolve()


def test_top_level_help_imports_no_torch():
    """`ageest --help` builds only the sub-command list: no sub-command module, so no torch."""
    code = ("import sys\nfrom ageest.cli import main\ntry:\n    main(['--help'])\n"
            "except SystemExit:\n    pass\nprint('torch' in sys.modules, 'ageest.engine.grids' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "False False"
    assert "reproduce" in done.stdout and "run" in done.stdout
