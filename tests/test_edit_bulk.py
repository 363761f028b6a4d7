"""The edit's copy in blocks (`tools.edit_copy`: runs of consecutive source episodes read a field at a time
and handed to `EpisodicWriter.write_block` with their metadata rows and stats parts as table rows) writes
the same store, file for file, as the copy episode by episode; a block that cannot be read or written falls
back to the episodes one by one, so errors name the same episode."""

from __future__ import annotations

import filecmp
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from shardyard.errors import SchemaError, StoreError
from shardyard.ingest.configs import IngestConfig
from shardyard.ingest.runner import run_ingest
from shardyard.schema import Episode, FieldSpec, Schema
from shardyard.stores.episode_block import EpisodeBlock
from shardyard.stores.episodic import EpisodicStore
from shardyard.stores.episodic_writer import EpisodicWriter
from shardyard.stores.frames.zarr_shard import shard_file
from shardyard.stores.stats import StatsConfig
from shardyard.tools import edit_copy
from shardyard.tools.edit import EditTarget, EpisodeSelection, delete_episodes, drop_field, merge_stores, rename_field

STATS = StatsConfig(kmeans_clusters=4, image_frame_stride=2, image_pixel_stride=2)


class _Source:
    """In-memory episodes with two cameras (stored JPEG and lz4), lengths 2 or 5 steps."""

    name = "blocks"

    def __init__(self, num_episodes: int, prefix: str) -> None:
        self.num_episodes, self.prefix = num_episodes, prefix

    def schema(self) -> Schema:
        """Two 8x8 cameras and two low-dim fields."""
        return Schema({"obs.rgb.front": FieldSpec("uint8", (8, 8, 3), kind="image"),
                       "obs.rgb.side": FieldSpec("uint8", (8, 8, 3), kind="image"),
                       "obs.eef_pos": FieldSpec("float32", (3,), unit="m"),
                       "action": FieldSpec("float64", (2,))})

    def keys(self) -> list[str]:
        """`<prefix>/0000`, ... in order."""
        return [f"{self.prefix}/{i:04d}" for i in range(self.num_episodes)]

    def describe(self) -> dict:
        """Provenance."""
        return {"name": self.name, "num_episodes": self.num_episodes}

    def read(self, key: str) -> Episode:
        """Episode `key`, seeded by its index."""
        i = int(key.rsplit("/", 1)[1])
        rng = np.random.default_rng(i)
        t = 2 if i % 7 == 3 else 5
        return Episode(key, {"obs.rgb.front": rng.integers(0, 255, (t, 8, 8, 3), dtype=np.uint8),
                             "obs.rgb.side": rng.integers(0, 255, (t, 8, 8, 3), dtype=np.uint8),
                             "obs.eef_pos": rng.normal(size=(t, 3)).astype(np.float32),
                             "action": rng.normal(size=(t, 2))},
                       meta={"task": "pick" if i % 3 else "place", "fps": 10.0,
                             "cameras": {"front": {"K": (np.eye(3) * (1 + i % 2)).tolist(), "width": 8, "height": 8}}})


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("bulk")
    for name, n in (("a", 300), ("b", 40)):
        run_ingest(_Source(n, name), IngestConfig(out=root / name, frame_codec="jpeg,obs.rgb.side=lz4",
                                                  commit_every=16, stats=STATS))
    return root / "a", root / "b"


def _same_files(a: Path, b: Path) -> None:
    """Every file of the two stores equal byte for byte, but the manifest's random generation id."""
    cmp = filecmp.dircmp(a, b)
    assert not cmp.left_only and not cmp.right_only and not cmp.funny_files
    _, mismatch, errors = filecmp.cmpfiles(a, b, [f for f in cmp.common_files if f != "manifest.json"], shallow=False)
    assert not mismatch and not errors, (a, mismatch, errors)
    for d in cmp.common_dirs:
        _same_files(a / d, b / d)
    if (a / "manifest.json").exists():
        ma, mb = (json.loads((p / "manifest.json").read_text()) for p in (a, b))
        ma.pop("generation", None), mb.pop("generation", None)
        ma["source"]["inputs"] = mb["source"]["inputs"] = None  # the inputs' urls
        assert ma == mb


def _both(edit, out: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, int]:
    """Run `edit(out)` in blocks and `edit(out-1by1)` with blocks off; returns the latter and the blocks
    written by the former."""
    calls = []
    original = EpisodicWriter.write_block

    def counted(self, block: EpisodeBlock) -> None:
        calls.append(len(block.keys))
        original(self, block)

    with monkeypatch.context() as m:
        m.setattr(EpisodicWriter, "write_block", counted)
        edit(out)
    with monkeypatch.context() as m:
        m.setattr(edit_copy, "_block_sources", lambda *args: set())
        edit(out.with_name(out.name + "-1by1"))
    return out.with_name(out.name + "-1by1"), len(calls)


def test_delete_in_blocks_writes_the_same_store(stores, tmp_path, monkeypatch):
    a, _ = stores
    sel = EpisodeSelection(where="length < 3")
    one, blocks = _both(lambda o: delete_episodes(str(a), sel, EditTarget(out=str(o))), tmp_path / "d", monkeypatch)
    kept = EpisodicStore(tmp_path / "d")
    assert kept.num_episodes == 300 - len(range(3, 300, 7)) and blocks == len(range(3, 300, 7)) + 1
    _same_files(tmp_path / "d", one)
    assert kept.stats["fields"]["obs.rgb.side"] and kept.stats == EpisodicStore(one).stats


@pytest.mark.parametrize("op", ["rename", "drop", "merge"])
def test_other_edits_in_blocks_write_the_same_store(op, stores, tmp_path, monkeypatch):
    a, b = stores
    edits = {"rename": lambda o: rename_field(str(a), "obs.rgb.side", "obs.rgb.left", EditTarget(out=str(o))),
             "drop": lambda o: drop_field(str(a), "obs.rgb.front", EditTarget(out=str(o))),
             "merge": lambda o: merge_stores([str(b), str(a)], EditTarget(out=str(o)))}
    one, blocks = _both(edits[op], tmp_path / op, monkeypatch)
    assert blocks == (2 if op == "merge" else 1)
    _same_files(tmp_path / op, one)
    if op == "rename":  # the copied stats parts carry the new name
        assert "obs.rgb.left" in EpisodicStore(one).stats["fields"]


def test_a_block_that_fails_is_copied_episode_by_episode(stores, tmp_path):
    a, _ = stores
    src = tmp_path / "src"
    shutil.copytree(a, src)
    Path(shard_file(str(src / "data" / "obs.rgb.side"), 1, 4)).unlink()  # the episodes from row 1024 on
    errors = []
    for blocks in (True, False):
        with pytest.MonkeyPatch.context() as m:
            if not blocks:
                m.setattr(edit_copy, "_block_sources", lambda *args: set())
            with pytest.raises(StoreError, match="shard file missing") as e:
                delete_episodes(str(src), EpisodeSelection(episodes="5"), EditTarget(out=str(tmp_path / f"o{blocks}")))
        errors.append((type(e.value), str(e.value).replace(f"o{blocks}", "o")))
    assert errors[0] == errors[1]


def test_write_block_refuses_a_bad_block_before_writing(tmp_path):
    schema = Schema({"x": FieldSpec("float32", (2,))})
    block = EpisodeBlock(["a", "b"], np.array([2, 1]), [{}, {}], {"x": np.zeros((3, 2), np.float32)})
    with EpisodicWriter(tmp_path / "s", schema) as w:
        w.write_block(block)
        for bad in (EpisodeBlock(["c"], np.array([2]), [{}], {"x": np.zeros((3, 2), np.float32)}),
                    EpisodeBlock(["c"], np.array([1]), [{}], {"x": np.full((1, 2), np.nan, np.float32)}),
                    EpisodeBlock(["c", "b"], np.array([1, 1]), [{}, {}], {"x": np.zeros((2, 2), np.float32)})):
            with pytest.raises(SchemaError):
                w.write_block(bad)
    store = EpisodicStore(tmp_path / "s")
    assert store.episode_keys == ["a", "b"] and store.num_steps == 3
    np.testing.assert_array_equal(store.read(1)["x"], np.zeros((1, 2), np.float32))
