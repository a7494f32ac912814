"""Tiling in worker processes: the same store as in one process, blocks that
cover every patch once, and a worker's failure that fails the job cleanly."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tifffile
from conftest import full_tissue
from test_bad_input import assert_clean_failure

from multimag.demo.svs_writer import write_svs
from multimag.wsi.cutting import iter_patch_sets
from multimag.wsi.patch_plan import TilingConfig, plan_patches
from multimag.wsi.slide import open_slide
from multimag.wsi.tile_use import TileUse
from multimag.wsi.tiling import tile_slide
from multimag.wsi.workers import BlockCutter, ChunkClaims, plan_blocks


def _digests(store: Path) -> dict[str, str]:
    return {str(f.relative_to(store)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(store.rglob("*")) if f.is_file()}


@pytest.mark.parametrize("reader", ["tiffslide", "openslide"])
def test_worker_processes_write_the_same_store(fiducial_slide, tmp_path, monkeypatch, reader):
    path, _ = fiducial_slide
    monkeypatch.setattr("multimag.wsi.workers.MIN_BLOCK", 16)
    stores = {}
    for threads in (1, 3):
        config = TilingConfig(magnifications=(40.0, 20.0, 10.0, 5.0), patch_px=64,
                              shard_patches=16, threads=threads)
        with open_slide(path, reader=reader) as slide:
            tissue = full_tissue(slide)
            n = len(plan_patches(slide, tissue, config).centers)
            stores[threads] = tmp_path / f"t{threads}.zarr"
            tile_slide(slide, stores[threads], config, tissue=tissue)
    assert n > 3 * 16
    one, three = _digests(stores[1]), _digests(stores[3])
    assert sum(name.startswith("mag_") and "/c/" in name for name in three) == 4 * -(-n // 16)
    assert one == three


def _log_decodes(slide) -> list[tuple[int, int, int]]:
    """From now on, note every tile the reader decodes."""
    decoded, original = [], slide.decode_tile

    def counting(level, ty, tx, out=None):
        decoded.append((level, ty, tx))
        return original(level, ty, tx, out)

    slide.decode_tile = counting
    return decoded


def test_tile_use_counts_every_decoded_tile_once(fiducial_slide):
    """With the tiles that two stripes share kept for the second (as the block cutter
    keeps them), the cutter decodes each tile once, and TileUse counts them."""
    path, _ = fiducial_slide
    config = TilingConfig(magnifications=(40.0, 20.0, 10.0, 5.0), patch_px=64)
    with open_slide(path, test_read=False) as slide:
        patches = plan_patches(slide, full_tissue(slide), config)
        use = TileUse.of(slide, patches)
        slide.keep(use.again[0])
        decoded = _log_decodes(slide)
        cut = sum(1 for _ in iter_patch_sets(slide, patches))
    assert cut == len(patches.centers)
    assert patches.stripes.max() >= 1
    assert len(set(decoded)) == len(decoded) > 0
    assert use.new.sum() == len(decoded)
    assert use.new[0] > 0 and (use.new >= 0).all()


def test_plan_blocks_cover_every_patch_once_in_whole_chunks():
    assert plan_blocks(0, 64, 4) == []
    assert plan_blocks(1000, 64, 4, min_block=1024) == [(0, 1000)]
    for n, chunk, workers in [(1000, 64, 2), (5000, 64, 3), (4097, 64, 8), (130, 16, 4)]:
        blocks = plan_blocks(n, chunk, workers, min_block=16)
        assert 1 < len(blocks) <= workers
        assert blocks[0][0] == 0 and blocks[-1][1] == n
        assert all(a < b and b == c for (a, b), (c, _) in zip(blocks, blocks[1:], strict=False))
        assert all(a % chunk == 0 for a, _ in blocks)
        sizes = [b - a for a, b in blocks]
        assert max(sizes) - min(sizes) <= chunk + n % chunk


def test_plan_blocks_balance_cost_not_count():
    """Patches that bring many tiles (a tissue edge) weigh more: the blocks split
    the total cost evenly, so the expensive half gets fewer patches."""
    n, chunk = 4096, 64
    cost = np.ones(n)
    cost[: n // 4] = 3.0  # the first quarter costs as much as the other three
    blocks = plan_blocks(n, chunk, 2, min_block=64, cost=cost)
    assert blocks == [(0, n // 4), (n // 4, n)]
    halves = [cost[a:b].sum() for a, b in blocks]
    assert halves[0] == halves[1]
    assert plan_blocks(n, chunk, 2, min_block=64) == [(0, n // 2), (n // 2, n)]


@pytest.mark.parametrize("reader", ["tiffslide", "openslide"])
def test_a_tile_that_fails_in_a_worker_fails_the_job_cleanly(tmp_path, reader):
    """The slide opens and its test read passes; a tile in the second block cannot
    be decoded. The error reaches the command line as one line naming the slide and
    the fix, and no store or temporary store is left."""
    image = np.full((1800, 2200, 3), 245, np.uint8)
    image[100:1700, 100:2100] = (200, 120, 180)
    image[100:1700:7, 100:2100] = (90, 40, 120)  # texture, so tiles are not all alike
    slide = tmp_path / "damaged.svs"
    write_svs(slide, image, mpp=0.25, app_mag=40, tile=256)
    with tifffile.TiffFile(slide) as tf:
        page = tf.pages[0]
        columns = -(-page.imagewidth // page.tilewidth)
        index = 6 * columns + 7  # level-0 rows 1536-1792, columns 1792-2048: late in grid order
        offset = page.dataoffsets[index]
    with open(slide, "r+b") as fh:
        fh.seek(offset)
        fh.write(b"\0" * 64)
    out = tmp_path / "out" / "damaged.zarr"
    out.parent.mkdir()
    res = subprocess.run([sys.executable, "-m", "multimag.cli", "tile", str(slide), str(out),
                          "--magnifications", "40", "20", "--patch-px", "32", "--reader",
                          reader, "--no-progress"], capture_output=True, text=True)
    line = assert_clean_failure(res, out, slide)
    assert "decode" in line or "read" in line, line


def test_chunk_claims_meet_without_gap_or_overlap():
    """Two workers take runs of chunks from the two ends of each segment until they
    meet: every chunk once, forwards ascending, backwards descending, short at the end."""
    claims = ChunkClaims([(0, 37), (37, 40)])
    taken = {False: [], True: []}
    rng = np.random.default_rng(3)
    while (claim := claims.take(0, backward := bool(rng.integers(2)))) is not None:
        taken[backward].append(claim)
    forwards, backwards = taken[False], taken[True]
    assert forwards and backwards
    assert all(b == c for (_, b), (c, _) in zip(forwards, forwards[1:], strict=False))
    assert all(a == d for (a, _), (_, d) in zip(backwards, backwards[1:], strict=False))
    chunks = sorted(i for a, b in forwards + backwards for i in range(a, b))
    assert chunks == list(range(37))
    assert min(b - a for a, b in forwards + backwards) == 1
    assert max(b - a for a, b in forwards + backwards) == 37 // 4
    assert claims.take(1, True) == (39, 40) and claims.take(1, False) == (37, 38)


@dataclass(frozen=True)
class _SlowFront:
    """A sink that is slow for the first half of the patches and notes who cut what."""

    folder: Path
    slow_below: int

    def __call__(self, first: int, sets) -> None:
        if first < self.slow_below:
            time.sleep(0.1)
        (self.folder / f"{first}-{os.getpid()}").write_text(str(len(sets)))


def test_a_slow_worker_is_relieved_by_its_partner(fiducial_slide, tmp_path):
    """The worker cutting forwards is slowed down (its sink sleeps): the one cutting
    backwards carries on past the planned middle, and every chunk is cut once."""
    path, _ = fiducial_slide
    config = TilingConfig(magnifications=(40.0, 10.0), patch_px=64)
    with open_slide(path) as slide:
        patches = plan_patches(slide, full_tissue(slide), config)
        n = len(patches.centers)
        with BlockCutter(slide, patches, workers=2, chunk=64, min_block=64) as cutter:
            assert len(cutter.blocks) == 2
            middle = cutter.blocks[1][0]
            assert cutter.run(_SlowFront(tmp_path, middle)) == n
    cut = [tuple(map(int, f.name.split("-"))) for f in tmp_path.iterdir()]
    assert sorted(first for first, _ in cut) == list(range(0, n, 64))
    assert sum(int(f.read_text()) for f in tmp_path.iterdir()) == n
    backwards = {pid for first, pid in cut if first == max(f for f, _ in cut)}.pop()
    done_backwards = [first for first, pid in cut if pid == backwards]
    assert min(done_backwards) < middle  # it went on into the slow half
    assert len(done_backwards) > len(cut) // 2


def test_tiles_shared_by_stripes_are_decoded_once(fiducial_slide):
    """The tiles on the edges between stripes are read by two stripes. Unless they
    are kept for the second (TileUse.again), in a cache too small to hold a stripe,
    the second decodes them again; kept, each tile is decoded once, and the patches
    are the same."""
    path, _ = fiducial_slide
    config = TilingConfig(magnifications=(40.0, 20.0, 10.0, 5.0), patch_px=64,
                          stripe_columns=24)
    decoded, digests = {}, {}
    for keep in (False, True):
        with open_slide(path, cache_mb=16, test_read=False) as slide:
            patches = plan_patches(slide, full_tissue(slide), config)
            use = TileUse.of(slide, patches)
            if keep:
                slide.keep(use.again[0])  # iter_patch_sets goes forwards
            decoded[keep] = _log_decodes(slide)
            digest = hashlib.sha256()
            for patch_set in iter_patch_sets(slide, patches):
                for patch in patch_set:
                    digest.update(np.ascontiguousarray(patch))
            digests[keep] = digest.hexdigest()
    forwards, backwards = use.again
    assert patches.stripes.max() >= 2 and forwards and backwards
    assert {key[:2] for key in forwards} >= {(0, 1), (0, 2)}  # full and reduced versions
    # a version that only the first stripe to decode a tile reads is not kept
    assert forwards != backwards
    unique = len(set(decoded[False]))
    assert unique == use.new.sum()
    assert len(decoded[False]) > unique  # without: edge tiles decoded again
    assert len(decoded[True]) == unique
    assert digests[False] == digests[True]
