"""utrc.io: atomic writes keep files readable as the umask allows, on both ways of writing them."""

import os

import pytest

from utrc import io


@pytest.mark.parametrize("tmpfile", [True, False], ids=["O_TMPFILE", "named temporary file"])
def test_written_files_follow_the_umask(tmp_path, monkeypatch, tmpfile):
    if not tmpfile:  # the fallback of systems / file systems without O_TMPFILE
        monkeypatch.delattr(os, "O_TMPFILE", raising=False)
    old = os.umask(0o022)
    try:
        path = io.atomic_write_json(tmp_path / "out.json", {"a": 1})
    finally:
        os.umask(old)
    assert path.read_text() == '{\n  "a": 1\n}\n'
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)  # a report must be servable by another user
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # no temporary file left
