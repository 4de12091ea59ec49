"""edgeport's per-user cache: its directory, the size each kind is kept within (least
recently used files deleted first, never the one just added), stale ``*.building``
files cleared, and ``edgeport cache``."""

from __future__ import annotations

import json
import os
import time

import pytest
from click.testing import CliRunner

from edgeport import InputError, cache
from edgeport.cli import cli


@pytest.fixture
def root(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEPORT_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv(cache.LIMIT_ENV, raising=False)
    (tmp_path / "xnnpack").mkdir()
    return tmp_path


def _file(root, name: str, size: int, used: float):
    path = root / "xnnpack" / name
    path.write_bytes(b"\0" * size)
    os.utime(path, (used, used))
    return path


@pytest.mark.parametrize("text, size", [("", cache.DEFAULT_LIMIT), ("4096", 4096), ("500M", 500 << 20),
                                         ("1.5g", 3 << 29), ("20GiB", 20 << 30), ("2 KB", 2048)])
def test_the_limit_reads_a_size_with_or_without_a_unit(monkeypatch, text, size):
    monkeypatch.setenv(cache.LIMIT_ENV, text)
    assert cache.size_limit() == size


def test_a_limit_that_is_not_a_size_is_one_clear_error(monkeypatch):
    monkeypatch.setenv(cache.LIMIT_ENV, "lots")
    with pytest.raises(InputError, match="EDGEPORT_CACHE_MAX='lots' is not a size") as e:
        cache.size_limit()
    assert "500M" in e.value.hint


def test_make_room_deletes_the_least_recently_used_first_and_never_the_new_file(root, monkeypatch):
    now = time.time()
    oldest, older, recent = (_file(root, f"{n}.xnnpack_cache", 100, now - age) for n, age in
                             (("oldest", 300), ("older", 200), ("recent", 100)))
    new = _file(root, "new.xnnpack_cache", 150, now - 1000)  # just built, though its mtime is old
    monkeypatch.setenv(cache.LIMIT_ENV, "260")
    assert cache.make_room("xnnpack", keep=new) == [oldest, older]
    assert sorted(p.name for p in (root / "xnnpack").iterdir()) == ["new.xnnpack_cache", "recent.xnnpack_cache"]
    monkeypatch.setenv(cache.LIMIT_ENV, "1")
    cache.make_room("xnnpack", keep=new)
    assert [p.name for p in (root / "xnnpack").iterdir()] == ["new.xnnpack_cache"]  # kept, over the bound alone


def test_a_file_marked_used_outlives_an_older_one(root, monkeypatch):
    a, b = _file(root, "a", 100, 1000), _file(root, "b", 100, 2000)
    cache.mark_used(a)
    monkeypatch.setenv(cache.LIMIT_ENV, "150")
    assert cache.make_room("xnnpack", keep=root / "none") == [b]


def test_a_dead_builds_file_goes_after_a_day_a_live_ones_stays(root):
    now = time.time()
    dead = _file(root, "k.123.building", 10, now - 2 * 86400)
    live = _file(root, "k.456.building", 10, now - 60)
    assert cache.make_room("xnnpack", keep=root / "none") == [dead]
    assert live.exists()
    assert cache.entries("xnnpack") == []  # a build in progress is not a cached file


def test_the_cache_command_lists_each_kind_and_clears(root):
    _file(root, "a.xnnpack_cache", 3 << 20, 1000)
    (root / "native").mkdir()
    shown = CliRunner().invoke(cli, ["cache", "--json"])
    assert shown.exit_code == 0, shown.output
    listing = json.loads(shown.output)
    assert listing["limit_bytes"] == cache.DEFAULT_LIMIT
    assert listing["kinds"] == [{"kind": "native", "files": 0, "bytes": 0},
                                {"kind": "xnnpack", "files": 1, "bytes": 3 << 20}]
    assert "xnnpack" in CliRunner().invoke(cli, ["cache"]).output
    cleared = CliRunner().invoke(cli, ["cache", "--clear"])
    assert cleared.exit_code == 0 and "freed 3.0 MiB" in cleared.output
    assert not root.exists()


def test_a_file_changed_since_it_was_published_is_deleted_to_be_built_again(root, caplog):
    """XNNPACK runs packed weights as they are: a damaged cache file gave other tokens
    with no error. Its sha256, kept when published, is checked at each use."""
    path = _file(root, "a.xnnpack_cache", 8192, time.time())
    cache.seal(path)
    assert cache.usable(path) and cache.usable(path)
    os.utime(path, ns=(0, 10**18))  # touched: hashed again, and the same
    assert cache.usable(path)
    with open(path, "r+b") as f:
        f.seek(4000)
        f.write(b"\1")
    assert not cache.usable(path)
    assert "is damaged" in caplog.text
    assert os.listdir(root / "xnnpack") == []  # the file and its seal


def test_a_file_published_without_a_seal_gets_one_at_first_use(root):
    """The native runner publishes the files it builds, as edgeports before digests did."""
    path = _file(root, "b.xnnpack_cache", 4096, time.time())
    assert cache.usable(path)
    path.write_bytes(b"\1" * 4096)
    assert not cache.usable(path)


def test_a_file_unchanged_since_its_seal_is_not_read_again_and_use_leaves_it_unchanged(root, monkeypatch):
    """Hashing at each use would cost 0.55 s of fp32 SmolLM2's ~1 s load."""
    path = _file(root, "c.xnnpack_cache", 4096, 5)
    cache.seal(path)
    monkeypatch.setattr(cache, "_sha256", lambda path: pytest.fail("hashed a file unchanged since its seal"))
    assert cache.usable(path)
    cache.mark_used(path)  # the seal is marked, so the file's modification time stays the sealed one
    assert cache.usable(path) and path.stat().st_mtime == 5
    assert cache.entries("xnnpack")[0].used > 5
    assert not cache.usable(root / "xnnpack" / "never-built.xnnpack_cache")


def test_seals_are_not_entries_and_go_with_their_files(root, monkeypatch):
    old, new = _file(root, "old", 4096, 1), _file(root, "new", 4096, 2)
    cache.seal(old)
    cache.seal(new)
    orphan = root / "xnnpack" / f"gone{cache.SEAL_SUFFIX}"
    orphan.write_text("0" * 64)
    assert [e.path.name for e in cache.entries("xnnpack")] == ["old", "new"]
    monkeypatch.setenv(cache.LIMIT_ENV, "4096")
    cache.make_room("xnnpack", keep=new)
    assert sorted(os.listdir(root / "xnnpack")) == ["new", f"new{cache.SEAL_SUFFIX}"]
