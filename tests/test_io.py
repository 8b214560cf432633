"""Atomic writes: the result appears whole or not at all, with the mode a plain open() gives."""
import os

import pytest

from genconv.io import atomic_path, write_text


def test_atomic_write_has_umask_mode_and_keeps_an_existing_mode(tmp_path):
    old = os.umask(0o022)
    try:
        p = tmp_path / "a.txt"
        write_text(p, "x")
        assert p.stat().st_mode & 0o777 == 0o644
        os.chmod(p, 0o600)
        write_text(p, "y")
        assert p.stat().st_mode & 0o777 == 0o600 and p.read_text() == "y"
    finally:
        os.umask(old)


def test_atomic_write_failure_leaves_old_file_and_no_temporary(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(p) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert p.read_text() == "old"
    assert sorted(f.name for f in tmp_path.iterdir()) == ["a.txt"]
