"""``ageest fetch fgnet`` against a release-format zip the test builds (no real photos) and serves
on loopback: download, checks, atomic unpacking, the manifest, idempotence, and one-line errors
offline, for a bad archive and for a landmark file that does not parse."""

from __future__ import annotations

import functools
import http.server
import threading
import zipfile
from pathlib import Path

import pytest

from ageest import cli
from ageest.data import verify_dataset_manifest
from ageest.data.fetch import FETCH_RECORD, MANIFEST, fetch_fgnet
from ageest.data.integrity import DataError
from ageest.data.loaders import load_fgnet, read_pts
from ageest.files import file_sha256, read_json
from tests.helpers import FGNET_NAMES, write_fgnet_fixture

#: the fixture's content, in place of the release's 1,002 images of 82 subjects
EXPECTED = {"n_images": 16, "n_subjects": 4, "age_min": 2, "age_max": 61}


def _pts(path: Path, n: int = 68, bad_line: str | None = None) -> None:
    # inside the fixture's 40 x 40 photos: x 8-30.5, y 10-31
    lines = [f"{8 + (i % 10) * 2.5} {10 + (i // 10) * 3.5}" for i in range(n)]
    if bad_line is not None:
        lines[3] = bad_line
    path.write_text("version: 1\nn_points: 68\n{\n" + "\n".join(lines) + "\n}\n")


def _release(root: Path) -> Path:
    """An unpacked release: FGNET/images (the fixture's names) and FGNET/points (lower case)."""
    write_fgnet_fixture(root / "FGNET")
    points = root / "FGNET" / "points"
    points.mkdir()
    for names in FGNET_NAMES.values():
        for name in names:
            _pts(points / f"{Path(name).stem.lower()}.pts")
    return root


def _zip(release: Path, path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for file in sorted(release.rglob("*")):
            if file.is_file():
                zf.write(file, file.relative_to(release))
        zf.writestr("__MACOSX/FGNET/._001A02.JPG", b"macOS metadata")
    return path


@pytest.fixture
def served(tmp_path):
    """(url of FGNET.zip on a loopback HTTP server, the zip); the server is stopped after."""
    site = tmp_path / "site"
    site.mkdir()
    archive = _zip(_release(tmp_path / "made"), site / "FGNET.zip")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/FGNET.zip", archive
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=30)


def test_fetch_downloads_checks_unpacks_and_is_idempotent(served, tmp_path):
    url, archive = served
    logged: list[str] = []
    to = fetch_fgnet(url, tmp_path / "FGNET", expected=EXPECTED, log=logged.append)
    assert sorted(p.name for p in to.iterdir()) == [FETCH_RECORD, "images", MANIFEST, "points"]
    record = read_json(to / FETCH_RECORD)
    assert record["archive_sha256"] == file_sha256(archive) and record["source"] == url
    assert record["n_images"] == 16 and record["n_points"] == 16
    assert file_sha256(archive) in logged[0]
    assert not list(tmp_path.glob(".FGNET-fetch-*"))  # no staging left behind
    # the manifest that later runs verify, with the final paths
    df = load_fgnet(to, expected=EXPECTED)  # the release folder itself is accepted
    assert verify_dataset_manifest(df, to / MANIFEST).ok
    assert all(str(to) in e["path"] for e in read_json(to / MANIFEST)["files"].values())
    # again: nothing is downloaded or rewritten
    before = (to / FETCH_RECORD).stat().st_mtime_ns
    fetch_fgnet("http://127.0.0.1:9/nothing-here.zip", to, expected=EXPECTED,
                log=logged.append)
    assert "already in" in logged[-1] and (to / FETCH_RECORD).stat().st_mtime_ns == before


def test_fetch_from_a_local_zip_or_folder_offline(served, tmp_path):
    _, archive = served
    from_zip = fetch_fgnet(archive, tmp_path / "a", expected=EXPECTED, log=lambda s: None)
    from_dir = fetch_fgnet(tmp_path / "made" / "FGNET", tmp_path / "b", expected=EXPECTED,
                           log=lambda s: None)
    assert read_json(from_dir / FETCH_RECORD)["archive_sha256"] is None
    assert sorted(p.name for p in (from_zip / "images").iterdir()) == \
        sorted(p.name for p in (from_dir / "images").iterdir())


def test_fetch_errors_are_one_line_naming_the_url_or_file(served, tmp_path, capsys):
    _, archive = served
    # offline: a port nothing listens on
    assert cli.main(["fetch", "fgnet", "--from", "http://127.0.0.1:9/FGNET.zip", "--to",
                     str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "cannot download http://127.0.0.1:9/FGNET.zip" in err and "--from FGNET.zip" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "x").exists()
    not_zip = tmp_path / "FGNET.zip"
    not_zip.write_bytes(b"<html>a login page</html>")
    assert cli.main(["fetch", "fgnet", "--from", str(not_zip), "--to", str(tmp_path / "x")]) == 2
    assert f"{not_zip}: not a zip archive" in capsys.readouterr().err
    assert cli.main(["fetch", "fgnet", "--from", str(tmp_path / "none.zip")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    # the content: a release of the wrong size, a landmark file that does not parse
    with pytest.raises(DataError, match=r"not the FG-NET release: n_images 16 \(the release has "
                                        r"1002\)"):
        fetch_fgnet(archive, tmp_path / "y", log=lambda s: None)
    assert not (tmp_path / "y").exists()
    broken = _release(tmp_path / "broken")
    _pts(broken / "FGNET" / "points" / "003a25.pts", bad_line="12.5 x")
    with pytest.raises(DataError, match=r"003a25.pts:7: '12.5 x' is not two numbers"):
        fetch_fgnet(broken, tmp_path / "z", expected=EXPECTED, log=lambda s: None)
    # a folder that is there already and not ours is never overwritten
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="exists and was not written by ageest fetch"):
        fetch_fgnet(archive, tmp_path / "taken", expected=EXPECTED, log=lambda s: None)


def test_a_zip_reaching_outside_its_folder_is_refused(tmp_path):
    evil = tmp_path / "FGNET.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../outside.txt", b"x")
    with pytest.raises(DataError, match="a path outside the archive's folder"):
        fetch_fgnet(evil, tmp_path / "FGNET", expected=EXPECTED, log=lambda s: None)
    assert not (tmp_path / "outside.txt").exists()


def test_read_pts_names_the_file_and_line(tmp_path):
    good = tmp_path / "001a02.pts"
    _pts(good)
    assert read_pts(good).shape == (68, 2)
    short = tmp_path / "001a05.pts"
    _pts(short, n=67)
    with pytest.raises(DataError, match=r"001a05.pts: 67 points between the braces, expected 68"):
        read_pts(short)
    (tmp_path / "x.pts").write_text("not landmarks")
    with pytest.raises(DataError, match=r"x.pts: not a landmark file"):
        read_pts(tmp_path / "x.pts")


# --- faces from the landmarks (face_crop: landmarks) -------------------------------------------


def test_the_loader_reads_each_photos_landmark_extent_and_the_digest_covers_it(tmp_path):
    from ageest.data.integrity import content_digest
    from ageest.data.loaders import LANDMARK_COLUMNS

    release = _release(tmp_path / "r") / "FGNET"
    df = load_fgnet(release, expected=EXPECTED)
    extents = df[list(LANDMARK_COLUMNS)].to_numpy()
    assert extents.shape == (16, 4)
    assert extents[0].tolist() == [8.0, 10.0, 30.5, 31.0]
    hashes = dict.fromkeys(df["path"], "same")
    moved = (release / "points" / "001a02.pts").read_text().replace("8.0 10.0", "45.0 10.0")
    (release / "points" / "001a02.pts").write_text(moved)
    again = load_fgnet(release, expected=EXPECTED)
    assert content_digest(again, hashes) != content_digest(df, hashes)
    # without points/ there are no such columns, and the digest is what it always was
    plain = load_fgnet(write_fgnet_fixture(tmp_path / "p"), expected=EXPECTED)
    assert not set(LANDMARK_COLUMNS) & set(plain.columns)


def test_decode_image_crops_the_box_before_resizing(tmp_path):
    import numpy as np
    from PIL import Image

    from ageest.data.dataset import decode_image, face_box

    rgb = np.zeros((40, 60, 3), np.uint8)
    rgb[10:30, 20:40] = 200  # a bright square: the "face"
    Image.fromarray(rgb).save(tmp_path / "p.png")
    box = face_box((20.0, 10.0, 40.0, 30.0), 1.0)
    assert box == (20, 10, 40, 30)
    face = decode_image(str(tmp_path / "p.png"), 8, box=box)
    assert face.shape == (3, 8, 8) and int(face.min()) == 200  # only the square
    wide = decode_image(str(tmp_path / "p.png"), 8, box=face_box((20.0, 10.0, 40.0, 30.0), 2.0))
    assert int(wide.min()) == 0 and int(wide.max()) == 200  # its surroundings too


def test_a_run_can_train_on_landmark_crops_and_the_official_twin_uses_whole_photos(tmp_path):
    import warnings

    from ageest.data import make_folds
    from ageest.engine.train import TrainConfig, train
    from ageest.official import official_grid

    release = _release(tmp_path / "r") / "FGNET"
    df = load_fgnet(release, expected=EXPECTED)
    folds = make_folds(df, "group-kfold", n_folds=2, val_fraction=0.0, seed=0)
    cfg = TrainConfig(model="small_cnn", epochs=1, batch_size=8, image_size=16, quiet=True,
                      face_crop="landmarks", face_margin=1.4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no validation images: the last epoch, said so
        result = train(cfg, df, folds[0], start_age=0, end_age=69)
    assert len(result.predictions) == len(folds[0].test)
    plain = load_fgnet(write_fgnet_fixture(tmp_path / "p"), expected=EXPECTED)
    with pytest.raises(ValueError, match="face_crop landmarks: these images have no landmarks"):
        train(cfg, plain, folds[0], start_age=0, end_age=69)
    grid = official_grid({"face_crop": "landmarks", "losses": ["amr"]}, "fgnet", ["amr"])
    assert grid["face_crop"] == "none"
