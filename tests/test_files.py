"""Atomic writes (imgen_jax.files): complete on success, untouched target on failure."""

import os
import stat

import pytest

from imgen_jax.files import atomic_dir, atomic_file


def test_atomic_file_replaces_only_on_success(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("old")
    with pytest.raises(ValueError):
        with atomic_file(path) as tmp:
            open(tmp, "w").write("half")
            raise ValueError("boom")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["a.txt"]
    with atomic_file(path, ".txt") as tmp:
        open(tmp, "w").write("new")
    assert path.read_text() == "new" and os.listdir(tmp_path) == ["a.txt"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~umask


def test_atomic_dir_swaps_whole_directories(tmp_path):
    out = tmp_path / "d"
    with atomic_dir(out) as tmp:
        open(os.path.join(tmp, "x"), "w").write("1")
    assert os.listdir(out) == ["x"]
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(out) as tmp:
            open(os.path.join(tmp, "y"), "w").write("2")
            raise KeyboardInterrupt
    assert os.listdir(out) == ["x"] and sorted(os.listdir(tmp_path)) == ["d"]
    with atomic_dir(out) as tmp:
        open(os.path.join(tmp, "z"), "w").write("3")
    assert os.listdir(out) == ["z"] and sorted(os.listdir(tmp_path)) == ["d"]
