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


def test_small_things_each_command_gets_right(tmp_path, monkeypatch, capsys):
    """AGEEST_DATA naming a file is one line naming the variable (was "File exists"); --device
    cuda without CUDA leaves no results folder behind; after a grid whose runs all failed, the
    aggregate table an earlier grid left is not printed as if current."""
    import pandas as pd
    import torch

    from ageest.data import registry
    from ageest.engine import grids

    a_file = tmp_path / "afile"
    a_file.write_text("")
    monkeypatch.setattr(paths, "DATA", a_file)
    assert cli.main(["data", "--dataset", "synthetic-fgnet"]) == 2
    err = capsys.readouterr().err
    assert f"AGEEST_DATA={a_file} is a file, not a folder" in err and len(err.splitlines()) == 1
    with pytest.raises(NotADirectoryError):
        registry.synthetic_root("synthetic-fgnet")

    if not torch.cuda.is_available():
        assert cli.main(["run", "--device", "cuda", "--results-dir", str(tmp_path / "r")]) == 2
        assert "CUDA is not available" in capsys.readouterr().err
        assert not (tmp_path / "r").exists()

    old = tmp_path / "res" / "tables" / "aggregate.md"
    old.parent.mkdir(parents=True)
    old.write_text("AN OLDER GRID'S TABLE")
    failed = pd.DataFrame([{"run_dir": str(tmp_path / "res" / "runs" / "x" / "fold-0"),
                            "status": "failed", "wall_time_s": 0.0, "mae": None,
                            "error": "ValueError: boom"}])
    monkeypatch.setattr(grids, "run_grid", lambda grid, **kw: failed)
    assert cli.main(["run", "--results-dir", str(tmp_path / "res")]) == 1
    out = capsys.readouterr().out
    assert "AN OLDER GRID'S TABLE" not in out and "no aggregate table" in out


def test_on_bad_skip_names_each_skipped_file_once(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    root = tmp_path / "utk"
    root.mkdir()
    for i in range(6):
        Image.fromarray(np.full((12, 12, 3), 20 * i, np.uint8)).save(
            root / f"{20 + i}_0_0_2017010{i}000000000.jpg.chip.jpg", format="JPEG")
    (root / "30_1_0_20170109000000000.jpg.chip.jpg").write_bytes(b"not a jpeg")
    assert cli.main(["data", "--dataset", "utkface", "--data-dir", str(root), "--on-bad",
                     "skip"]) == 0
    captured = capsys.readouterr()
    assert (captured.out + captured.err).count("30_1_0_20170109000000000") == 1
