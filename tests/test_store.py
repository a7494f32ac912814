"""Stores reopen in a fresh process with plain zarr.open; schema, atomicity."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import zarr

from multimag.errors import StoreError
from multimag.wsi.geometry import Pyramid, Resolution, plan_magnifications
from multimag.wsi.store import SCHEMA_VERSION, StoreWriter, open_store


def _plans(sides_mode="same_center", patch=32):
    pyramid = Pyramid.from_dimensions([(4000, 3000), (1000, 750)], 0.25)
    return plan_magnifications(pyramid, [40, 20, 5], patch, sides_mode, Resolution())


def _write(path, n, compression="jpeg", shard=4, mode="same_center"):
    plans = _plans(mode)
    rng = np.random.default_rng(1)

    def patch(side):  # smooth, image-like content with a little noise
        yy, xx = np.mgrid[0:side, 0:side] / side
        base = 150 + 60 * np.sin(6 * xx + rng.uniform(0, 6)) * np.cos(4 * yy)
        return np.clip(base[..., None] + rng.normal(0, 3, (side, side, 3)), 0, 255
                       ).astype(np.uint8)

    sets = [[patch(p.side) for p in plans] for _ in range(n)]
    centers = rng.integers(0, 4000, (n, 2))
    with StoreWriter(path, centers=centers, tissue=np.linspace(0.5, 1, n), plans=plans,
                     attrs={"slide_id": "s1"}, compression=compression,
                     shard_patches=shard) as writer:
        for first in range(0, n, shard):
            writer.shards(first, sets[first:first + shard])
        writer.commit(n)
    return plans, sets, centers


@pytest.mark.parametrize("compression", ["jpeg", "zstd"])
@pytest.mark.parametrize("n", [0, 1, 7, 8, 13])
def test_fresh_process_reads_back_what_was_written(tmp_path, compression, n):
    path = tmp_path / "s1.zarr"
    plans, sets, centers = _write(path, n, compression, mode="same_field")
    code = f"""
import json, sys, zarr, numpy as np
g = zarr.open({str(path)!r}, mode="r")
out = {{k: [list(a.shape), str(a.dtype), list(a.chunks)] for k, a in g.arrays()}}
out["_attrs"] = dict(g.attrs)
np.save({str(tmp_path / 'arr.npy')!r}, g["mag_40x"][:])
print(json.dumps(out))
"""
    # a fresh interpreter that does not import multimag: the JPEG codec comes from the
    # zarr.codecs entry point
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    info = json.loads(res.stdout)
    assert info["_attrs"]["schema_version"] == SCHEMA_VERSION
    assert info["_attrs"]["complete"] is True
    assert info["centers"][:2] == [[n, 2], "int64"]
    assert info["tissue"][:2] == [[n], "float32"]
    for p in plans:
        assert info[p.array_name][:3] == [[n, p.side, p.side, 3], "uint8", [1, p.side, p.side, 3]]
    got = np.load(tmp_path / "arr.npy")
    for i in range(n):
        diff = np.abs(got[i].astype(int) - sets[i][0]).mean()
        assert diff < (4 if compression == "jpeg" else 1e-9)
    np.testing.assert_array_equal(zarr.open_group(path)["centers"][:], centers.reshape(-1, 2))


def test_interrupted_write_leaves_no_store(tmp_path):
    path = tmp_path / "s1.zarr"
    plans = _plans()
    with pytest.raises(RuntimeError), StoreWriter(
            path, centers=np.zeros((5, 2)), tissue=np.ones(5), plans=plans, attrs={},
            shard_patches=4) as writer:
        writer.shards(0, [[np.zeros((p.side, p.side, 3), np.uint8) for p in plans]] * 4)
        raise RuntimeError("killed")
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


def test_commit_refuses_a_store_with_a_shard_missing(tmp_path):
    """A block of patches that never reached its shards (a worker that lost them)
    fails the commit, even when the count handed in looks right."""
    path = tmp_path / "s1.zarr"
    plans = _plans()
    blank = [[np.zeros((p.side, p.side, 3), np.uint8) for p in plans]] * 4
    with pytest.raises(StoreError, match="missing shards mag_40x/c/1/0/0/0"), StoreWriter(
            path, centers=np.zeros((10, 2)), tissue=np.ones(10), plans=plans, attrs={},
            shard_patches=4) as writer:
        writer.shards(0, blank)
        writer.shards(8, blank[:2])
        writer.commit(10)
    assert not path.exists() and list(tmp_path.iterdir()) == []
    with pytest.raises(StoreError, match="not one shard"), StoreWriter(
            path, centers=np.zeros((10, 2)), tissue=np.ones(10), plans=plans, attrs={},
            shard_patches=4) as writer:
        writer.shards(2, blank)


def test_open_store_rejects_unfinished_and_foreign(tmp_path):
    with pytest.raises(StoreError, match="does not exist"):
        open_store(tmp_path / "missing.zarr")
    g = zarr.open_group(tmp_path / "old.zarr", mode="w")
    g.attrs["schema_version"] = 0
    with pytest.raises(StoreError, match="schema version 0"):
        open_store(tmp_path / "old.zarr")
    _write(tmp_path / "ok.zarr", 3)
    assert open_store(tmp_path / "ok.zarr").attrs["slide_id"] == "s1"


@pytest.mark.parametrize("compression", ["jpeg", "zstd"])
def test_patch_reader_equals_zarr_in_random_order(tmp_path, compression):
    """Batched reads (cached shard index, pread, decode) give exactly what zarr
    gives, for patches in any order, repeated, across shards, at every size."""
    from multimag.wsi.store import PatchReader

    path = tmp_path / "s1.zarr"
    _write(path, 13, compression, shard=4, mode="same_field")
    group = zarr.open_group(path, mode="r")
    reader = PatchReader(path)
    assert reader.n == 13 and reader.array_names == ["mag_20x", "mag_40x", "mag_5x"]
    order = np.array([12, 0, 5, 5, 3, 11, 8, 1])
    for name in reader.array_names:
        want = group[name][:][order]
        got = reader.read(name, order)
        assert got.shape == want.shape and reader.side(name) == want.shape[1]
        np.testing.assert_array_equal(got, want)
    with pytest.raises(StoreError, match="patch 13 does not exist"):
        reader.read("mag_40x", [2, 13])
    with pytest.raises(StoreError, match="no array 'mag_10x'"):
        reader.read("mag_10x", [0])
