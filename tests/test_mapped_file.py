"""mapped_file.forget: a mapped range leaves the process and the page cache, and nothing
is lost (the LLM memory test, tests/llm/test_llm_cli.py, shows what it saves)."""

import ctypes
import mmap
import os
import sys

import numpy as np
import pytest

from edgeport.mapped_file import forget, map_file

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mincore and fadvise are Linux's")
PAGES = 8192  # 32 MiB: the page cache drops whole folios (up to 2 MiB here), so half must span many


def resident_pages(path, pages: int = PAGES) -> int:
    """How many of the file's first ``pages`` are in the page cache (mincore over a map of our own)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    with open(path, "rb") as f:
        probe = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    vector = np.zeros(len(probe) // mmap.PAGESIZE, dtype=np.uint8)
    address = np.frombuffer(probe, dtype=np.uint8).ctypes.data
    assert libc.mincore(ctypes.c_void_p(address), len(probe), vector.ctypes.data) == 0, ctypes.get_errno()
    probe.close()
    return int((vector[:pages] & 1).sum())


@pytest.fixture
def written(tmp_path):
    path = tmp_path / "model.bin"
    data = np.random.default_rng(0).integers(0, 256, PAGES * mmap.PAGESIZE, dtype=np.uint8).tobytes()
    path.write_bytes(data)  # just written: every page in the page cache
    return path, data


def test_forget_drops_the_range_from_the_page_cache_and_keeps_the_bytes(written):
    path, data = written
    view = memoryview(map_file(str(path)))
    half = PAGES // 2
    assert bytes(view) == data and resident_pages(path, half) > 0
    forget(view[:half * mmap.PAGESIZE])
    assert resident_pages(path, half) == 0
    assert bytes(view) == data  # read back from the file


def test_forget_leaves_a_file_saved_over_the_map_alone(written, tmp_path):
    path, data = written
    view = memoryview(map_file(str(path)))
    replacement = tmp_path / "new.bin"
    replacement.write_bytes(data[::-1])
    os.replace(replacement, path)  # as Program.save does: another inode under the name
    before = resident_pages(path)
    forget(view)
    assert before > 0 and resident_pages(path) == before  # the new file's cache is not ours to drop
    assert bytes(view) == data


def test_forget_ignores_what_is_not_a_map(written):
    forget(memoryview(written[1]))
    forget(b"bytes")


def test_a_named_pipe_is_refused_without_waiting_for_a_writer(tmp_path):
    """Opening a FIFO blocks until something writes to it: `edgeport run FIFO` hung."""
    import subprocess

    fifo = tmp_path / "program.edgeport"
    os.mkfifo(fifo)
    code = ("import edgeport\ntry:\n    edgeport.load(%r)\nexcept edgeport.ProgramError as exc:\n    print(exc)" % str(fifo))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "cannot read program" in done.stdout and "not a regular file" in done.stdout, done.stderr
