"""``ageest data``: summary, manifest written then verified, error exit for a missing flag."""

from __future__ import annotations

from PIL import Image

from ageest import paths
from ageest.cli import main


def test_data_command_writes_then_verifies_manifest(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(paths, "DATA", tmp_path / "data")
    manifest = tmp_path / "m.json"
    args = ["data", "--dataset", "synthetic-fgnet", "--size", "16", "--manifest", str(manifest),
            "--protocol", "group-kfold"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "1002 images, 82 subjects, ages 0-69" in out and "wrote manifest" in out
    assert "fold 4:" in out
    assert main(args + ["--strict"]) == 0
    assert "dataset matches its manifest" in capsys.readouterr().out
    # change one image: verification reports it and --strict fails
    first = sorted((tmp_path / "data" / "synthetic-fgnet-16px-seed0").glob("*.JPG"))[0]
    Image.new("RGB", (16, 16)).save(first, format="JPEG")
    assert main(args + ["--strict"]) == 1
    captured = capsys.readouterr()
    assert f"1 changed: {first.stem}" in captured.out
    # the CLI prints library warnings as one line of its own, without a source line
    warning = [line for line in captured.err.splitlines() if "differs from its manifest" in line]
    assert len(warning) == 1 and warning[0].startswith("ageest data: warning: ")


def test_data_command_missing_flag(capsys):
    assert main(["data", "--dataset", "clap2016"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ageest data: error: dataset 'clap2016' needs --data-dir")
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
