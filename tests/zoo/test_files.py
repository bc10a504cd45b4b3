"""zoo.files: the one atomic writer (files and folders)."""
import json
import os
import stat

import numpy as np
import pytest

from zoo.files import atomic_open, copy_file, staging_folder, write_bytes, write_json, write_text


def test_write_replaces_whole_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "sub" / "report.json"
    write_json(target, {"b": 1, "a": [1.5, None]})
    assert target.read_text() == '{\n  "a": [\n    1.5,\n    null\n  ],\n  "b": 1\n}\n'
    write_text(target, "second")
    assert target.read_text() == "second"
    write_bytes(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in target.parent.iterdir()) == ["report.json"]


def test_new_files_get_umask_permissions_not_mkstemp_0600(tmp_path):
    old = os.umask(0o022)
    try:
        write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644


@pytest.mark.parametrize("error", [ValueError, KeyboardInterrupt])
def test_an_error_while_writing_keeps_the_old_file(tmp_path, error):
    target = tmp_path / "labels.txt"
    target.write_text("old labels\n")
    with pytest.raises(error):
        with atomic_open(target) as handle:
            handle.write("half of the new")
            raise error("stopped")
    assert target.read_text() == "old labels\n"
    assert [p.name for p in tmp_path.iterdir()] == ["labels.txt"]


def test_unserialisable_json_writes_nothing(tmp_path):
    with pytest.raises(TypeError):
        write_json(tmp_path / "x.json", {"a": object()})
    assert list(tmp_path.iterdir()) == []


def test_binary_writers_take_the_handle(tmp_path):
    with atomic_open(tmp_path / "c.npy", "wb") as handle:
        np.save(handle, np.arange(4, dtype=np.float32), allow_pickle=False)
    assert np.load(tmp_path / "c.npy").tolist() == [0.0, 1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="mode must be"):
        with atomic_open(tmp_path / "d", "a"):
            pass


def test_copy_file(tmp_path):
    (tmp_path / "src.bin").write_bytes(bytes(range(256)) * 5000)
    copy_file(tmp_path / "src.bin", tmp_path / "out" / "dst.bin")
    assert (tmp_path / "out" / "dst.bin").read_bytes() == (tmp_path / "src.bin").read_bytes()


def test_staging_folder_swaps_in_or_leaves_the_old_folder(tmp_path):
    target = tmp_path / "model"
    with staging_folder(target) as staging:
        (staging / "config.json").write_text(json.dumps({"v": 1}))
    assert json.loads((target / "config.json").read_text()) == {"v": 1}
    with pytest.raises(RuntimeError):
        with staging_folder(target) as staging:
            (staging / "config.json").write_text(json.dumps({"v": 2}))
            raise RuntimeError("crash before the swap")
    assert json.loads((target / "config.json").read_text()) == {"v": 1}
    with staging_folder(target) as staging:
        (staging / "weights").write_bytes(b"w")
    assert sorted(p.name for p in target.iterdir()) == ["weights"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
