"""ageest.files (atomic writers, JSON, manifests) and ageest.pipeline.artefacts (tables, figures)."""

import json
import math
import os
import stat

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from ageest import files  # noqa: E402
from ageest.pipeline import artefacts  # noqa: E402


def test_atomic_write_leaves_no_temp_and_uses_umask_mode(tmp_path):
    path = files.atomic_write_text(tmp_path / "sub" / "a.txt", "hello")
    assert path.read_text() == "hello"
    assert [p.name for p in path.parent.iterdir()] == ["a.txt"]
    mode = stat.S_IMODE(os.stat(path).st_mode)
    assert mode == 0o666 & ~files._UMASK


def test_atomic_write_keeps_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "keep.json"
    files.write_json(target, {"v": 1})

    class Boom:
        def tolist(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        files.write_json(target, {"v": Boom()})
    assert json.loads(target.read_text()) == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.json"]


def test_write_json_converts_numpy_and_nonfinite(tmp_path):
    p = files.write_json(
        tmp_path / "m.json", {"a": np.float32(1.5), "b": np.arange(3), "c": math.nan, "d": tmp_path}
    )
    back = files.read_json(p)
    assert back == {"a": 1.5, "b": [0, 1, 2], "c": None, "d": str(tmp_path)}


def test_read_json_names_the_file_on_corruption(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        files.read_json(bad)


def test_save_table_writes_csv_md_tex(tmp_path):
    df = pd.DataFrame({"method": ["amr", "ce"], "mae": [3.14159, math.nan]})
    out = artefacts.save_table(df, tmp_path, "k_ablation", "MAE by K")
    assert set(out) == {"csv", "md", "tex"}
    assert out["csv"] == tmp_path / "tables" / "k_ablation.csv"
    back = pd.read_csv(out["csv"])
    assert back["mae"].iloc[0] == pytest.approx(3.14159)
    md = out["md"].read_text()
    assert md.startswith("MAE by K") and "3.142" in md
    assert "\\caption{MAE by K}" in out["tex"].read_text()
    marked = artefacts.save_table(df, tmp_path, "k_ablation", "MAE by K", synthetic=True)
    assert marked["md"].read_text().startswith("Synthetic data")


def test_save_table_and_figure_refuse_undeclared_names(tmp_path):
    df = pd.DataFrame({"a": [1]})
    with pytest.raises(ValueError, match="'scratch' is not declared in ageest.pipeline.catalogue"):
        artefacts.save_table(df, tmp_path, "scratch")
    fig, _ = plt.subplots()
    with pytest.raises(ValueError, match="figure 'scratch' is not declared"):
        artefacts.save_figure(fig, tmp_path, "scratch")
    plt.close(fig)
    assert not (tmp_path / "tables").exists() and not (tmp_path / "figures").exists()


def test_save_table_does_not_print_small_values_as_zero(tmp_path):
    df = pd.DataFrame({"p_value": [0.0002, 0.0, 0.06]})
    md = artefacts.save_table(df, tmp_path, "paired_tests")["md"].read_text()
    cells = [line.strip("|").strip() for line in md.splitlines()[2:]]
    assert cells == ["2.0e-04", "0.000", "0.060"]


def test_save_figure_writes_png_and_pdf(tmp_path):
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    out = artefacts.save_figure(fig, tmp_path, "cs_curves")
    assert out["png"] == tmp_path / "figures" / "cs_curves.png"
    plt.close(fig)
    assert out["png"].read_bytes()[:4] == b"\x89PNG"
    assert out["pdf"].read_bytes()[:4] == b"%PDF"


def test_manifest_records_environment_and_parameters(tmp_path):
    p = files.write_manifest(tmp_path, parameters={"lr": 0.001}, seeds=[0], wall_time_s=1.5)
    m = files.read_json(p)
    assert m["parameters"] == {"lr": 0.001} and m["seeds"] == [0] and m["wall_time_s"] == 1.5
    assert m["versions"]["torch"] is not None
    assert "torch_threads" in m["device"]


def test_disk_full_names_the_file(tmp_path, monkeypatch):
    import errno

    import ageest.files as art

    real = os.fdopen

    class Full:
        def __init__(self, fd, mode):
            self.fh = real(fd, mode)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(art.os, "fdopen", Full)
    with pytest.raises(OSError, match=r"No space left on device: .*metrics.json") as info:
        art.atomic_write_bytes(tmp_path / "metrics.json", b"{}")
    assert info.value.errno == errno.ENOSPC
    assert not list(tmp_path.iterdir())  # no temporary file left behind
