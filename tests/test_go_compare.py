"""realalloc against the real Go runtime: the same allocations, the same statistics.

A small Go program (tests/go/memstats) is built with the local Go toolchain.  It
reads a deterministic sequence of allocations (tiny pointer-free objects, small
objects with and without pointers, large objects), turns the garbage collector
off, allocates every object while keeping it alive, and prints how
runtime.MemStats changed.  realalloc replays the same sequence on a fresh Heap.
What must agree, and why:

* malloc counts per size class, exactly: both sides choose the same class for
  every size and pack tiny objects into 16-byte blocks by the same rule (Go's
  alignment, and keeping whichever block has more room left), so the number of
  objects per class is a pure function of the sequence.  Go's MemStats.BySize
  has only 61 entries (classes 0..60); classes 61..67 are compared as one sum
  derived from Mallocs;
* Mallocs, Frees (in Go, Frees counts the tiny pieces too: nothing is really
  freed with the collector off) and HeapAlloc growth, exactly;
* HeapInuse growth within 1%: both get whole spans per class, but Go starts
  with a heap left by its own start-up, whose partly used spans it fills first;
* roundupsize for every size 1..32768, read from Go through append's capacity
  (growslice allocates roundupsize(n) bytes when appending n bytes to a nil
  []byte and reports all of them as capacity), against
  realalloc.core.sizeclasses.roundupsize and Heap.usable_size.

Go's allocator changed in Go 1.22 (a malloc header in objects with pointers over
512 bytes), so only Go 1.19 .. 1.21, whose malloc realalloc reproduces, is used.
The test is skipped, with the reason, only when no such Go toolchain is found.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import realalloc
from realalloc.core.sizeclasses import (
    CLASS_TO_SIZE,
    MAX_SMALL_SIZE,
    NUM_SIZE_CLASSES,
    PAGE_SIZE,
    TINY_SIZE,
    roundupsize,
)

GO_SOURCE = Path(__file__).resolve().parent / "go" / "memstats"
GO_BY_SIZE = 61  # len(runtime.MemStats.BySize): fixed by Go's compatibility promise
SEED = 20240519
N_OBJECTS = 20_000
LARGE_MAX = 1 << 20
HEAP_INUSE_TOLERANCE = 0.01

Sequence = list[tuple[int, bool]]  # (size, scan)


# --- helpers -----------------------------------------------------------------


def find_go() -> tuple[str, str]:
    """Return (path of a usable ``go`` command, its version), or skip the calling test.

    Prefers Debian's versioned Go 1.19 if it is installed next to a newer default.
    """
    candidates = ["/usr/lib/go-1.19/bin/go", shutil.which("go")]
    found = []
    for go in candidates:
        if not go or not os.access(go, os.X_OK):
            continue
        out = subprocess.run(
            [go, "env", "GOVERSION"], capture_output=True, text=True, timeout=60, check=False
        ).stdout.strip()
        m = re.fullmatch(r"go1\.(\d+)(?:\.\d+)?\S*", out)
        if m and 19 <= int(m.group(1)) <= 21:
            return go, out
        found.append(f"{go} ({out or 'unknown version'})")
    if found:
        reason = f"no Go 1.19..1.21 toolchain: found {', '.join(found)}"
    else:
        reason = "no Go toolchain: `go` is not on PATH (Debian: apt-get install golang-go)"
    pytest.skip(f"{reason}; realalloc is compared with Go 1.19's allocator")


def go_env(tmp: Path) -> dict[str, str]:
    """Environment for building offline; caches go under ``tmp`` if HOME is not writable."""
    env = dict(os.environ, GOFLAGS="-mod=mod", GOPROXY="off", CGO_ENABLED="0")
    env["GOTOOLCHAIN"] = "local"
    home = os.environ.get("HOME", "")
    if not home or not os.access(home, os.W_OK):
        env["GOCACHE"] = str(tmp / "gocache")
        env["GOPATH"] = str(tmp / "gopath")
    return env


def run_go(binary: Path, *args: str) -> Any:
    """Run the built program with one P and the collector off; return its JSON output."""
    env = dict(os.environ, GOMAXPROCS="1", GOGC="off")
    proc = subprocess.run(
        [str(binary), *args], capture_output=True, text=True, timeout=120, env=env, check=False
    )
    assert proc.returncode == 0, f"memstats {' '.join(args)} failed:\n{proc.stderr}"
    return json.loads(proc.stdout)


def log_uniform(rng: random.Random, lo: int, hi: int) -> int:
    """A size in ``lo .. hi`` whose logarithm is uniform, so every class gets objects."""
    return min(hi, max(lo, round(lo * (hi / lo) ** rng.random())))


def make_sequence(seed: int = SEED, n: int = N_OBJECTS) -> Sequence:
    """The deterministic sequence of (size, scan) both sides allocate.

    Tiny noscan objects of every size 1..15, small noscan and scan objects
    (scan sizes are multiples of 8, so a []*byte of size/8 elements has exactly
    that size), every class size and every class size + 1 of both kinds, and a
    few large objects up to LARGE_MAX, all shuffled together.
    """
    rng = random.Random(seed)
    seq: Sequence = []
    for size in CLASS_TO_SIZE[1:]:
        for s in (size, size + 1):
            seq.append((s, False))
            seq.append(((s + 7) & ~7, True))
    while len(seq) < n:
        r = rng.random()
        if r < 0.40:
            seq.append((rng.randint(1, TINY_SIZE - 1), False))
        elif r < 0.68:
            seq.append((log_uniform(rng, TINY_SIZE, MAX_SMALL_SIZE), False))
        elif r < 0.995:
            seq.append((log_uniform(rng, 1, MAX_SMALL_SIZE // 8) * 8, True))
        else:
            size = rng.randint(MAX_SMALL_SIZE + 1, LARGE_MAX)
            scan = rng.random() < 0.5
            seq.append(((size + 7) & ~7 if scan else size, scan))
    rng.shuffle(seq)
    return seq


def tiny_blocks_and_packed(seq: Sequence) -> tuple[int, int]:
    """Go's tiny allocator over ``seq``: (16-byte blocks started, pieces packed into a block).

    Go 1.19's mallocgc for a noscan object under 16 bytes: align the block's
    offset (8 if size % 8 == 0, 4 if size % 4 == 0, 2 if even); if the piece
    fits, it is packed (``c.tinyAllocs++``); otherwise it starts a new block, a
    class 2 malloc, which becomes the current block if it has more room left.
    """
    blocks = packed = offset = 0
    current = False
    for size, scan in seq:
        if scan or size >= TINY_SIZE:
            continue
        align = 8 if size % 8 == 0 else 4 if size % 4 == 0 else 2 if size % 2 == 0 else 1
        start = -(-offset // align) * align
        if current and start + size <= TINY_SIZE:
            offset = start + size
            packed += 1
            continue
        blocks += 1
        if not current or size < offset:
            current, offset = True, size
    return blocks, packed


def write_sequence(seq: Sequence, path: Path) -> None:
    """Write ``seq`` in the format the Go program reads: ``SIZE noscan|scan`` per line."""
    path.write_text("".join(f"{size} {'scan' if scan else 'noscan'}\n" for size, scan in seq))


def replay(seq: Sequence) -> tuple[realalloc.MemStats, realalloc.MemStats]:
    """Allocate ``seq`` on a fresh Heap, keeping every object; return stats before and after."""
    heap = realalloc.Heap(background_scavenger=False)
    try:
        before = heap.stats()
        addrs = [heap.malloc(size, scan=scan) for size, scan in seq]
        after = heap.stats()
        assert len(addrs) == len(seq)
        heap.check()
        return before, after
    finally:
        heap.close()


# --- fixtures ----------------------------------------------------------------


def go_build(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Go program in ``source`` built with the local Go toolchain (skips
    the calling test if there is none); the binary is named after the folder."""
    go, _version = find_go()
    tmp = tmp_path_factory.mktemp(f"go-{source.name}")
    binary = tmp / source.name
    proc = subprocess.run(
        [go, "build", "-o", str(binary), "."],
        cwd=source,
        env=go_env(tmp),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, f"go build failed:\n{proc.stderr}"
    return binary


@pytest.fixture(scope="session")
def memstats_binary(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """tests/go/memstats built with the local Go toolchain (skips if there is none)."""
    yield go_build(GO_SOURCE, tmp_path_factory)


@pytest.fixture(scope="session")
def sequence() -> Sequence:
    """The allocation sequence shared by Go and realalloc."""
    return make_sequence()


@pytest.fixture(scope="session")
def go_delta(
    memstats_binary: Path, sequence: Sequence, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """How Go's MemStats changed over the sequence."""
    path = tmp_path_factory.mktemp("seq") / "sequence.txt"
    write_sequence(sequence, path)
    delta: dict[str, Any] = run_go(memstats_binary, "alloc", str(path))
    assert delta["num_gc"] == 0, "a garbage collection ran although GC was off"
    assert delta["num_by_size"] == GO_BY_SIZE
    return delta


@pytest.fixture(scope="session")
def ra_stats(sequence: Sequence) -> tuple[realalloc.MemStats, realalloc.MemStats]:
    """realalloc's stats before and after replaying the sequence."""
    return replay(sequence)


# --- tests -------------------------------------------------------------------


def test_sequence_covers_every_kind(sequence: Sequence) -> None:
    """The sequence has tiny, small noscan, small scan and large objects, every class."""
    tiny = sum(1 for size, scan in sequence if not scan and size < TINY_SIZE)
    large = sum(1 for size, _ in sequence if size > MAX_SMALL_SIZE)
    scan = sum(1 for size, s in sequence if s and size <= MAX_SMALL_SIZE)
    assert len(sequence) >= N_OBJECTS
    assert tiny > 5000 and scan > 3000 and 50 < large < 300
    assert all(size % 8 == 0 for size, s in sequence if s)


def test_by_size_class_sizes_match(go_delta: dict[str, Any]) -> None:
    """Go's BySize[i].Size is realalloc's class size for i < 61."""
    assert go_delta["by_size_size"] == list(CLASS_TO_SIZE[:GO_BY_SIZE])


def test_class_malloc_counts_match_go(
    go_delta: dict[str, Any],
    ra_stats: tuple[realalloc.MemStats, realalloc.MemStats],
    sequence: Sequence,
) -> None:
    """Objects allocated per size class: exactly Go's BySize, and the folded classes 61..67."""
    before, after = ra_stats
    ra = [a.mallocs - b.mallocs for a, b in zip(after.by_size, before.by_size, strict=True)]
    assert len(ra) == NUM_SIZE_CLASSES
    go = go_delta["by_size"]
    mismatched = {i: (CLASS_TO_SIZE[i], go[i], ra[i]) for i in range(GO_BY_SIZE) if go[i] != ra[i]}
    assert not mismatched, f"class: (size, go, realalloc) differ: {mismatched}"

    # Classes 61..67 are not in Go's BySize, but Go's Mallocs counts them.  With
    # the collector off Go's Frees are exactly its tiny pieces (counted in both).
    n_large = sum(1 for size, _ in sequence if size > MAX_SMALL_SIZE)
    go_folded = go_delta["mallocs"] - sum(go) - go_delta["frees"] - n_large
    assert sum(ra[GO_BY_SIZE:]) == go_folded
    assert after.large_allocs - before.large_allocs == n_large


def test_tiny_allocs_match_go(
    go_delta: dict[str, Any],
    ra_stats: tuple[realalloc.MemStats, realalloc.MemStats],
    sequence: Sequence,
) -> None:
    """Tiny pieces packed into an already started block: Go's tinyAllocs, seen as its Frees.

    Go counts a tiny piece that starts a new 16-byte block only as that block
    (a class 2 malloc); its tinyAllocs counts the pieces that fit in the
    current block (runtime/malloc.go, mallocgc: ``c.tinyAllocs++``).
    """
    before, after = ra_stats
    blocks, packed = tiny_blocks_and_packed(sequence)
    assert go_delta["frees"] == packed, "Go's tiny allocator is not the modelled one"
    ra_tiny = after.tiny_allocs - before.tiny_allocs
    assert ra_tiny == packed, (
        f"realalloc counted {ra_tiny} tiny allocs, Go {packed}: Go does not count the "
        f"{blocks} pieces that started a new block (they are class 2 mallocs)"
    )


def test_mallocs_and_frees_match_go(
    go_delta: dict[str, Any],
    ra_stats: tuple[realalloc.MemStats, realalloc.MemStats],
    sequence: Sequence,
) -> None:
    """MemStats.Mallocs and Frees grow exactly as Go's (one malloc per object allocated)."""
    before, after = ra_stats
    assert len(sequence) == go_delta["mallocs"]
    ra = (after.mallocs - before.mallocs, after.frees - before.frees)
    assert ra == (go_delta["mallocs"], go_delta["frees"]), "(mallocs, frees) differ from Go's"


def test_heap_alloc_matches_go(
    go_delta: dict[str, Any], ra_stats: tuple[realalloc.MemStats, realalloc.MemStats]
) -> None:
    """HeapAlloc grows by exactly Go's bytes (small at class size, large at whole pages)."""
    before, after = ra_stats
    assert after.heap_alloc - before.heap_alloc == go_delta["heap_alloc"]


def test_heap_inuse_growth_matches_go(
    go_delta: dict[str, Any], ra_stats: tuple[realalloc.MemStats, realalloc.MemStats]
) -> None:
    """HeapInuse grows by the same bytes as Go's, within 1%.

    realalloc starts empty and needs exactly ceil(objects / objects per span)
    spans per span class.  Go first fills the free slots its start-up left in
    partly used spans (``room_before``), which can save a whole span of a class
    whose count just spills over a span boundary; here that is a few pages.
    """
    before, after = ra_stats
    ra_growth = after.heap_inuse - before.heap_inuse
    go_growth = go_delta["heap_inuse"]
    assert ra_growth % PAGE_SIZE == 0 and go_growth % PAGE_SIZE == 0
    assert abs(ra_growth - go_growth) <= HEAP_INUSE_TOLERANCE * go_growth, (
        f"heap in use grew by {ra_growth} bytes in realalloc, {go_growth} in Go; Go's spans "
        f"had {go_delta['room_before']} bytes of free slots before"
    )


@pytest.mark.slow
def test_roundupsize_matches_go(memstats_binary: Path) -> None:
    """Go's roundupsize(n) for n = 1..32768 is realalloc's roundupsize and usable_size."""
    go = run_go(memstats_binary, "roundup", str(MAX_SMALL_SIZE))
    assert len(go) == MAX_SMALL_SIZE
    sizes = range(1, MAX_SMALL_SIZE + 1)
    ra = [roundupsize(n) for n in sizes]
    diff = [(n, g, r) for n, g, r in zip(sizes, go, ra, strict=True) if g != r]
    assert not diff, f"(size, go, realalloc) differ, first ones: {diff[:10]}"

    heap = realalloc.Heap(background_scavenger=False)
    try:
        usable = []
        for n in sizes:
            addr = heap.malloc(n, scan=True)
            usable.append(heap.usable_size(addr))
            heap.free(addr)
    finally:
        heap.close()
    diff = [(n, g, u) for n, g, u in zip(sizes, go, usable, strict=True) if g != u]
    assert not diff, f"(size, go, usable_size) differ, first ones: {diff[:10]}"
