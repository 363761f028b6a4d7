"""`ingest dino` end to end on a store made by `ingest yam` from the shared YAM episodes: local vs Ray,
SIGKILL of the driver then resume, provenance refusal, decode failures masked and reported, inspect."""

from __future__ import annotations

import json
import shutil
import signal

import numpy as np
import pytest
from conftest import YAM_EPISODES, YAM_MODEL, run_cli, sigkill_group, start_paused_cli, wait_paused

from shardyard.errors import ConfigError
from shardyard.ingest.dino import DinoConfig, ingest_dino
from shardyard.models.backbones import BackboneConfig
from shardyard.stores.checksums import CHUNK_CRC, read_crc32c
from shardyard.stores.features import open_features
from shardyard.tools.verify import verify_store

ARGS = ["--image-size", "112", "--batch-size", "4"]  # grid 8x8, D 32


def _tokens(path):
    fs = open_features(path)
    n = fs.num_samples
    return fs.patch_tokens(0, n), fs.cls_token(0, n), fs.missing.copy()


@pytest.fixture(scope="module")
def source(tmp_path_factory, shared_data):
    """An episodic store from 2 real YAM episodes (top camera, 64x48) and a reference feature store."""
    root = tmp_path_factory.mktemp("dino")
    raw = root / "raw"
    for ep in sorted(p.parent for p in YAM_EPISODES.rglob("metadata.json"))[:2]:
        shutil.copytree(ep, raw / ep.relative_to(YAM_EPISODES))
    store = root / "store"
    run_cli("ingest", "yam", raw, "--robot-model", YAM_MODEL, "--out", store, "--image-size", "64x48",
            "--camera", "top", check=True)
    ref = root / "ref"
    res = ingest_dino(_cfg(store, ref))
    assert res.exit_code == 0 and res.num_batches_done_before == 0
    return store, ref


def _cfg(store, out, **kw):
    """The in-process equivalent of `ingest dino STORE --out OUT` + ARGS."""
    bb = BackboneConfig(spec="tiny-random-dinov2", image_size=kw.pop("image_size", (112, 112)))
    return DinoConfig(store=str(store), out=out, backbone=bb, batch_size=4, **kw)


def test_reference_store_is_aligned_and_complete(source):
    store, ref = source
    from shardyard import open_store

    s, fs = open_store(str(store)), open_features(ref)
    assert fs.num_samples == s.num_steps > 100 and fs.grid == (8, 8) and fs.embed_dim == 32
    np.testing.assert_array_equal(fs.episode_ends, s.episode_ends)
    patch, cls, missing = _tokens(ref)
    assert patch.shape == (s.num_steps, 64, 32) and patch.dtype == np.float16 and not missing.any()
    assert np.isfinite(patch).all() and (np.abs(patch).sum(axis=(1, 2)) > 0).all()
    key = fs.key
    assert key["field"] == "obs.rgb.top" and key["model"]["spec"] == "tiny-random-dinov2"
    assert key["dtype"] == "float16" and key["model"]["image_hw"] == [112, 112]
    assert len(fs.stats["pca"]["components"]) == 3


def test_ray_path_on_local_ray_gives_identical_tokens(source, tmp_path):
    import ray

    store, ref = source
    started = not ray.is_initialized()  # another test in this worker may have started it
    if started:  # address="local": a new instance, never a cluster another job started
        ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:  # one actor: the 2-node cluster test (tests/test_cluster.py) runs two
        out = tmp_path / "ray"
        res = ingest_dino(DinoConfig(store=str(store), out=out, batch_size=4, ray=True, workers=1,
                                     backbone=BackboneConfig(image_size=(112, 112))))
    finally:
        if started:
            ray.shutdown()
    assert res.exit_code == 0 and res.num_batches_run == len(open_features(ref).layout.batches())
    for a, b in zip(_tokens(ref), _tokens(out)):
        np.testing.assert_array_equal(a, b)
    assert open_features(out).stats == open_features(ref).stats
    # the checksums taken in the Ray actors' processes are those of the local run
    np.testing.assert_array_equal(read_crc32c(out, CHUNK_CRC, "cls_token"), read_crc32c(ref, CHUNK_CRC, "cls_token"))


def test_sigkill_of_driver_then_rerun_equals_uninterrupted(source, tmp_path):
    store, ref = source
    out = tmp_path / "killed"
    total = len(open_features(ref).layout.batches())
    proc = start_paused_cli("ingest", "dino", store, "--out", out, *ARGS, pause_file=tmp_path / "pause", after=3)
    wait_paused(proc)  # after the 3rd batch's completion record; the 4th cannot be recorded before the kill
    assert sigkill_group(proc) == -signal.SIGKILL
    done = len(list((out / "progress").glob("*.json")))
    assert done == 3 < total and not (out / "manifest.json").exists()
    rerun = ingest_dino(_cfg(store, out))
    assert (rerun.num_batches_run, rerun.num_batches_done_before) == (total - done, done)
    for a, b in zip(_tokens(ref), _tokens(out)):
        np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8))
    assert open_features(out).stats == open_features(ref).stats
    for name in ("patch_tokens", "cls_token"):  # checksums of the killed run's batches and the rerun's
        np.testing.assert_array_equal(read_crc32c(out, CHUNK_CRC, name), read_crc32c(ref, CHUNK_CRC, name))
    report = verify_store(out)
    assert report.ok and not report.warnings, report.summary()


def test_verify_names_a_flipped_byte_in_a_token_chunk(source, tmp_path):
    """`shardyard verify` (CLI) of a fresh `ingest dino` store: intact, then, with one byte of a raw float16
    token chunk flipped (it still decodes), exit 1 naming the sample, its YAM episode and step, and the field."""
    store, ref = source
    ok = run_cli("verify", ref)
    assert ok.returncode == 0 and "intact" in ok.stdout and "WARNING" not in ok.stdout, ok.stdout
    out = tmp_path / "copy"
    shutil.copytree(ref, out)
    fs = open_features(out)
    row = int(fs.episode_ends[0]) + 2  # step 2 of the second episode
    rows = fs.layout.shard_rows
    shard = out / "patch_tokens" / "c" / str(row // rows) / "0" / "0"
    index = np.frombuffer(shard.read_bytes()[-(16 * rows + 4):-4], dtype="<u8").reshape(rows, 2)
    data = bytearray(shard.read_bytes())
    data[int(index[row % rows, 0]) + 7] ^= 0x40
    shard.write_bytes(bytes(data))
    bad = run_cli("verify", out)
    key = fs.manifest["source"]["episode_keys"][1]
    assert bad.returncode == 1 and f"sample {row}: chunk crc32c" in bad.stdout, bad.stdout
    assert f"episode={key}" in bad.stdout and "step=2" in bad.stdout and "field=patch_tokens" in bad.stdout


def test_different_provenance_key_is_refused(source):
    store, ref = source
    before = sorted(p.name for p in (ref / "progress").iterdir())
    with pytest.raises(ConfigError) as e:
        ingest_dino(_cfg(store, ref, image_size=(140, 140), dtype="float32"))
    msg = str(e.value)
    assert "different provenance key" in msg
    assert "dtype: 'float16' -> 'float32'" in msg and "model.image_hw: [112, 112] -> [140, 140]" in msg
    assert sorted(p.name for p in (ref / "progress").iterdir()) == before
    assert (ref / "manifest.json").exists()


def _corrupt_chunk(array_dir, row):
    """Overwrite the bytes of inner chunk `row` inside its shard (the shard index stays valid)."""
    meta = json.loads((array_dir / "zarr.json").read_text())
    per_shard = meta["chunk_grid"]["configuration"]["chunk_shape"][0]
    shard = array_dir / "c" / str(row // per_shard) / "0" / "0" / "0"
    data = bytearray(shard.read_bytes())
    index = np.frombuffer(bytes(data[-(16 * per_shard + 4):-4]), dtype="<u8").reshape(per_shard, 2)
    off, n = (int(v) for v in index[row % per_shard])
    data[off:off + n] = b"\xff" * n
    shard.write_bytes(bytes(data))


def test_decode_failure_is_masked_and_reported(source, tmp_path):
    store, ref = source
    bad = tmp_path / "bad_store"
    shutil.copytree(store, bad)
    _corrupt_chunk(bad / "data" / "obs.rgb.top", 7)
    out = tmp_path / "f"
    proc = run_cli("ingest", "dino", bad, "--out", out, *ARGS)  # exit 2 and a pointer to the report
    assert proc.returncode == 2, proc.stderr
    assert "1 frame(s) failed to decode and are masked missing" in proc.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["missing"] == [7] and report["errors"][0]["index"] == 7
    assert report["errors"][0]["field"] == "obs.rgb.top" and report["errors"][0]["step"] == 7
    patch, cls, missing = _tokens(out)
    rpatch, rcls, _ = _tokens(ref)
    assert missing.sum() == 1 and missing[7] and not patch[7].any() and not cls[7].any()
    keep = ~missing
    np.testing.assert_array_equal(patch[keep], rpatch[keep])


def test_inspect_dispatches_on_feature_store(source, tmp_path):
    _, ref = source
    proc = run_cli("inspect", ref, "--out", tmp_path / "plots", check=True)
    assert "feature store" in proc.stdout and "grid 8x8" in proc.stdout and "missing frames: 0" in proc.stdout
    png = tmp_path / "plots" / "tokens_pca.png"
    assert png.exists() and png.stat().st_size > 10_000
