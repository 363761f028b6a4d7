"""The rough edges a new user met (issue 21, item 6), each filed down: command lines in the README and the manual
use only options their command has; every `--frame-codec` help lists the codec parser's names; progress lines
and "resumed" off a terminal; `train volume-query` on a two-camera store picks the first camera and says so, and
says when there is no validation episode; no SVT-AV1 banner; zeros printed as 0; legible `inspect` frames whose
wrist panels draw the path; a bounded attention picture; JPEG-encoded Rerun recordings; `ingest webvid` on a
folder of local clips; `--where` type errors named and quoted values kept whole."""

from __future__ import annotations

import itertools
import json
import re
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import typer
from conftest import SHARED, YAM_EPISODES, YAM_MODEL, run_cli, sigkill_group, start_paused_cli, wait_paused
from PIL import Image

from shardyard import open_store
from shardyard.cli import app  # the app with every command registered
from shardyard.stores.frames.registry import FRAME_CODECS, parse_frame_codecs
from shardyard.tools.inspect.foveated import draw_clip
from shardyard.tools.inspect.summary import eef_pixels, frames_figure, summarize
from shardyard.train.loop import format_table

ROOT = Path(__file__).resolve().parents[1]


# -- the command line and the manual agree ---------------------------------------------------------------
def _commands() -> list[tuple[str, str]]:
    """(file, command line) of every line in a fenced block of README.md and docs/**/*.md that starts with
    `ingest ` or `shardyard ` (continuation lines joined, comments cut)."""
    out = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        fenced, pending = False, ""
        for line in path.read_text().splitlines():
            if line.lstrip().startswith("```"):
                fenced, pending = not fenced, ""
                continue
            if not fenced:
                continue
            line = pending + line.split(" #")[0].strip()
            if line.endswith("\\"):
                pending = line[:-1] + " "
                continue
            pending = ""
            if line.startswith(("ingest ", "shardyard ")):
                out.append((str(path.relative_to(ROOT)), line))
    return out


def _resolve(words: list[str]):
    """The click command `words` name (`ingest yam ...` is `shardyard ingest yam ...`) and the words after it."""
    cmd = typer.main.get_command(app)
    words = words[1:] if words[0] == "shardyard" else words
    while hasattr(cmd, "commands") and words and words[0] in cmd.commands:
        cmd, words = cmd.commands[words[0]], words[1:]
    return cmd, words


def test_every_option_a_documented_command_uses_exists():
    commands = _commands()
    assert len(commands) > 30 and any(f == "README.md" for f, _ in commands)
    problems = []
    for where, line in commands:
        cmd, rest = _resolve(line.split())
        if hasattr(cmd, "commands"):
            problems.append(f"{where}: `{line}` names no command of `{cmd.name}`")
            continue
        known = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)} | {"--help"}
        used = {t.split("=")[0] for w in rest for t in re.findall(r"--[a-z0-9][a-z0-9-]*(?:=\S*)?", w)}
        problems += [f"{where}: `{line}`: {cmd.name} has no {o}" for o in sorted(used - known)]
    assert not problems, "\n".join(problems)


def _all_commands(cmd, path=()):
    if hasattr(cmd, "commands"):
        for name, sub in cmd.commands.items():
            yield from _all_commands(sub, (*path, name))
    else:
        yield path, cmd


def test_every_frame_codec_help_lists_the_parsers_codecs():
    helps = {" ".join(path): p.help for path, cmd in _all_commands(typer.main.get_command(app))
             for p in cmd.params if "--frame-codec" in p.opts}
    assert {"ingest yam", "ingest libero", "ingest lerobot", "ingest nyu", "recode"} <= set(helps)
    for name, text in helps.items():
        listed = re.search(r"one of ([a-z0-9, ]+) \(", text)
        assert listed and tuple(listed.group(1).split(", ")) == tuple(FRAME_CODECS), (name, text)
    for codec in FRAME_CODECS:  # the names are the parser's: each parses, another does not
        assert parse_frame_codecs(codec)[""] == codec
    with pytest.raises(Exception, match="unknown codec"):
        parse_frame_codecs("webp")
    shown = _shown(run_cli("ingest", "yam", "--help", check=True).stdout)
    assert "one of jpeg, video, lz4, zstd, none" in shown and "video: H.264 MP4 per episode" in shown


def _shown(help_text: str) -> str:
    """Rich's `--help` panel as plain words (box drawing and line wraps gone)."""
    return " ".join(re.sub(r"[\u2500-\u257f]", " ", help_text).split())


# -- a small real store: 3 YAM episodes, two cameras, FK poses ----------------------------------------------
@pytest.fixture(scope="module")
def yam3(tmp_path_factory):
    root = tmp_path_factory.mktemp("yam3")
    task = sorted(YAM_EPISODES.iterdir())[0]
    shutil.copytree(task, root / "raw" / task.name)
    proc = run_cli("ingest", "yam", root / "raw", "--robot-model", YAM_MODEL, "--out", root / "s", "--image-size",
                   "96x72", check=True)
    # stderr is not a terminal here: progress as log lines, the last one with the totals
    assert re.search(r"INFO shardyard.progress: ingest yam: 3/3 episodes \(100%\), [0-9.]+ episodes/s, done in",
                     proc.stderr), proc.stderr
    return root / "s"


def test_ingest_resumed_says_so(tmp_path, tiny_yam_dir):
    raw = tiny_yam_dir(num_episodes=3, steps=8, width=32, height=24)
    args = ["ingest", "yam", str(raw), "--commit-every", "1", "--out", str(tmp_path / "s")]
    proc = start_paused_cli(*args, pause_file=tmp_path / "pause", after=1)
    wait_paused(proc)
    assert sigkill_group(proc) == -signal.SIGKILL
    rerun = run_cli(*args, check=True)
    assert "resumed: 1 of 3 episode(s) already stored" in rerun.stderr
    assert re.search(r"ingest yam: 3/3 episodes \(100%\)", rerun.stderr)


def test_volume_query_picks_the_first_camera_and_warns(yam3, tmp_path):
    first = run_cli("train", "volume-query", "--store", yam3, "--out", tmp_path / "run", "--batch-size", "2",
                    "--log-every", "1", "--plot-every", "0", "--device", "cpu", "--steps", "2", check=True)
    assert "no --camera given: using obs.rgb.top, the first of the store's cameras ['top', 'wrist']" in first.stderr
    assert first.stderr.count("no --camera given") == 1
    assert "no validation pass: the store's split has no validation episode (all 3 in train)" in first.stderr
    assert re.search(r"train volume-query: step 2/2 \(100%\), [0-9.e+-]+ steps/s, done in .*; loss", first.stderr)
    shown = _shown(run_cli("train", "volume-query", "--help", check=True).stdout)
    assert re.search(r"--camera\s+<str>\s+Camera to train on", shown)


def test_a_resumed_run_says_from_which_step(tmp_path, caplog):
    import torch

    from shardyard.progress import PROGRESS_LOGGER
    from shardyard.train.loop import MetricLogger, resume_state, save_checkpoint

    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    save_checkpoint(tmp_path / "latest.pth", model=model, optimizer=opt, step=7, config={"lr": 0.1, "steps": 9})
    with caplog.at_level("INFO", logger=PROGRESS_LOGGER):
        state = resume_state(tmp_path / "latest.pth", {"lr": 0.1, "steps": 12}, ["steps"], model=model, optimizer=opt)
        log = MetricLogger(tmp_path / "m.jsonl", resume_step=7, total_steps=12, name="toy")
        log.log({"step": 8, "loss": 0.5})
        log.log({"step": 12, "loss": 0.25})
    assert state["step"] == 7 and "resumed from step 7" in caplog.text
    assert "train toy: step 8/12 (67%)" in caplog.text and "step 12/12 (100%)" in caplog.text


def test_export_prints_no_encoder_banner(yam3, tmp_path):
    proc = run_cli("export", "lerobot", yam3, "--out", tmp_path / "x", "--vcodec", "libsvtav1", check=True)
    assert "Svt[" not in proc.stderr and proc.stderr.count("\n") <= 2, proc.stderr


def test_tables_print_zero_not_a_subnormal(yam3, tmp_path):
    copy = tmp_path / "s"
    shutil.copytree(yam3, copy)
    stats = json.loads((copy / "stats.json").read_text())
    stats["fields"]["obs.gripper"]["min"] = [2.45e-315]
    stats["fields"]["obs.joint_pos"]["min"] = [2.45e-315, 0.5, 0.25]
    (copy / "stats.json").write_text(json.dumps(stats))
    text = summarize(open_store(str(copy), verify_reads=False))
    assert "e-315" not in text and re.search(r"obs.gripper\s+\d+\s+\S+\s+\S+\s+0\s", text)
    assert "[0 0.5 0.25]" in text
    table = format_table([{"step": 1, "loss": 2.45e-315}, {"step": 2, "loss": 0.5}], ["step", "loss"])
    assert table.splitlines()[2].split() == ["1", "0"] and "e-315" not in table


def test_inspect_frames_are_legible_and_wrist_panels_draw_the_path(yam3):
    store = open_store(str(yam3))
    fig = frames_figure(store, "wrist", [0, 1, 2], n_frames=4)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    texts = [fig._suptitle] + [sf._suptitle for sf in fig.subfigs] + [ax.title for ax in fig.get_axes()]
    boxes = [t.get_window_extent(renderer) for t in texts if t is not None and t.get_text()]
    assert len(boxes) == 1 + 3 + 12
    overlaps = [(a, b) for a, b in itertools.combinations(boxes, 2) if a.overlaps(b)]
    assert not overlaps
    assert max(b.x1 for b in boxes) <= fig.bbox.width + 1 and min(b.x0 for b in boxes) >= -1  # nothing cut off
    # the wrist camera moves: each panel draws the whole path as that frame's pose sees it, not one point
    for ax in fig.get_axes():
        path = ax.get_lines()[0]
        assert len(path.get_xdata()) == store.episode_length(0) or len(path.get_xdata()) > 100
    pix = eef_pixels(store, 0, "wrist", at_step=50)
    seen = pix[np.isfinite(pix).all(1)]
    assert len(seen) > 50 and np.ptp(seen[:, 0]) > 5   # a trajectory, not the fixed gripper point
    assert "path as each frame's camera pose sees it" in fig._suptitle.get_text()


def test_attention_picture_is_bounded(tmp_path):
    rng = np.random.default_rng(0)
    t = 16
    frames = rng.integers(0, 256, (t, 256, 256, 3), dtype=np.uint8)
    t0 = time.perf_counter()
    png, gif = draw_clip(tmp_path, "attention_x", frames, rng.random((t, 16, 16)), rng.random((t, 16, 16)),
                         {"truth": "a long caption " * 20, "fine": "f", "coarse": "c"})
    took = time.perf_counter() - t0
    with Image.open(png) as im:
        w, h = im.size
    assert w <= 1500 and h <= 700 and w > 2 * h, (w, h)        # a wide strip, not 430 x 2523
    with Image.open(gif) as im:
        assert im.n_frames == t
    assert took < 30, took


def test_view_recording_holds_jpegs(yam3, tmp_path):
    store = open_store(str(yam3))
    out = tmp_path / "ep0.rrd"
    run_cli("view", yam3, "--episode", "0", "--out", out, check=True)
    share = store.episode_length(0) / store.num_steps
    store_bytes = sum(p.stat().st_size for p in Path(yam3).rglob("*") if p.is_file()) * share
    raw = sum(store.read(0, [f])[f].nbytes for f in store.schema.of_kind("image"))
    assert out.stat().st_size <= 5 * store_bytes and out.stat().st_size < raw / 2, (out.stat().st_size, store_bytes)


# -- ingest webvid on a folder of local clips --------------------------------------------------------------
def test_webvid_local_clip_folder(tmp_path):
    from shardyard.loaders.streaming import ClipStream

    clips = tmp_path / "clips"
    shutil.copytree(SHARED / "webvid" / "clips", clips)
    names = sorted(p.name for p in clips.glob("*.mp4"))
    (clips / "captions.csv").write_text(f"file,caption\n{names[0]},a demo clip\n{Path(names[1]).stem},\"two, "
                                        "with a comma\"\n")
    (clips / names[2]).with_suffix(".txt").write_text("from the sidecar\n")
    proc = run_cli("ingest", "webvid", clips, "--out", tmp_path / "w", check=True)
    assert "3 of 3 sample(s) ok" in proc.stdout
    got = {item["caption"] for item in ClipStream(str(tmp_path / "w"), num_frames=2, size=32, shuffle_buffer=0)}
    assert got == {"a demo clip", "two, with a comma", "from the sidecar"}
    (clips / names[2]).with_suffix(".txt").unlink()
    proc = run_cli("ingest", "webvid", clips, "--out", tmp_path / "w2")
    assert proc.returncode == 2 and "no_caption: 1" in proc.stdout
    rows = json.loads((tmp_path / "w2" / "report.json").read_text())["samples"]
    bad = [r for r in rows if r["status"] != "success"]
    assert len(bad) == 1 and bad[0]["file"] == names[2] and names[2] in bad[0]["error_message"]
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.md").write_text("nothing here")
    proc = run_cli("ingest", "webvid", empty, "--out", tmp_path / "w3")
    assert proc.returncode == 1 and "no .tar shards" in proc.stderr and "Bad split" not in proc.stderr


# -- edit --where -----------------------------------------------------------------------------------------
def test_where_errors_are_named_and_quoted_values_kept_whole(tmp_path):
    from shardyard.errors import ConfigError
    from shardyard.schema import Episode, FieldSpec, Schema
    from shardyard.stores.episode_where import parse_clauses
    from shardyard.stores.episodic_writer import EpisodicWriter

    schema = Schema({"action": FieldSpec("float32", (2,), None, "vector")})
    with EpisodicWriter(tmp_path / "s", schema) as w:
        for i, task in enumerate(["pick and place", "pick", "place", "pick and place"]):
            w.write(Episode(f"ep{i}", {"action": np.full((3 + i, 2), i, np.float32)}, {"task": task}))
    store = str(tmp_path / "s")
    out = ["--out", str(tmp_path / "o"), "--dry-run"]
    ok = run_cli("edit", "delete-episodes", store, "--where", "task == 'pick and place'", *out, check=True)
    assert "delete episode 0 (ep0" in ok.stdout and "delete episode 3 (ep3" in ok.stdout
    assert "ep1" not in ok.stdout and "ep2" not in ok.stdout
    both = run_cli("edit", "delete-episodes", store, "--where", "task == \"pick and place\" and length > 3", *out,
                   check=True)
    assert "(ep3" in both.stdout and "(ep0" not in both.stdout
    bad = run_cli("edit", "delete-episodes", store, "--where", "length < 'abc'", *out)
    assert bad.returncode == 1 and "compares a number with the string 'abc'" in bad.stderr
    assert "Traceback" not in bad.stderr and not (tmp_path / "o").exists()
    with pytest.raises(ConfigError, match="quote is not closed"):
        parse_clauses("task == 'pick")
