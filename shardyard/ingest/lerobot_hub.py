"""`ingest lerobot ORG/NAME[@REVISION]`: a LeRobot dataset on the Hugging Face Hub, downloaded only as far as
the ingest needs it.

Two downloads through `huggingface_hub.snapshot_download` (allow-patterns), into the Hugging Face cache
(`HF_HUB_CACHE`, by default `$HF_HOME/hub` = `~/.cache/huggingface/hub`; the repo's files under
`datasets--ORG--NAME/blobs/`, named by content, linked from `snapshots/<commit>/`):

1. `meta/*` at REVISION (a branch, tag or commit; default `main`), which resolves it to a commit;
2. at that commit, the data file and the video files of each selected episode (`--episodes 0-9,42`; all
   episodes without it). A v3.0 file holding many episodes is fetched once.

The ingest then reads the snapshot folder like a local dataset, and the manifest's source block records the
repo id, the revision asked for and the commit it resolved to. A download interrupted midway resumes (the
client keeps `.incomplete` files); a rerun downloads nothing it has (one request: the revision's commit),
and with `HF_HUB_OFFLINE=1` it reads the cache without any request. Selected episodes whose files the repo
does not hold are left out and named in one summary line (`LeRobotSource.absent`).
"""

from __future__ import annotations

import glob
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

from shardyard.errors import ConfigError
from shardyard.ingest.lerobot import LeRobotConfig, LeRobotSource

__all__ = ["fetch_lerobot", "open_lerobot", "parse_repo_spec"]

_SPEC = re.compile(r"(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?:@(?P<rev>[^\s@]+))?")


def parse_repo_spec(text: str) -> tuple[str, str | None] | None:
    """`"org/name@v3.0"` -> `("org/name", "v3.0")`, `"org/name"` -> `("org/name", None)`; None when `text` is
    not a repo id (a path with more parts, `..`, spaces)."""
    m = _SPEC.fullmatch(text.strip())
    if m is None or ".." in m["repo"]:
        return None
    return m["repo"], m["rev"]


def _download(repo_id: str, revision: str | None, patterns: list[str], **hub: Any) -> Path:
    """`snapshot_download` of the files matching `patterns`; returns the snapshot folder (named by its commit).
    Raises `ConfigError` naming the repo for a missing repo, revision or cache entry (offline)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    where = f"{repo_id}@{revision}" if revision else repo_id
    try:
        return Path(snapshot_download(repo_id, repo_type="dataset", revision=revision, allow_patterns=patterns,
                                      **hub))
    except RevisionNotFoundError:
        raise ConfigError(f"the dataset repo has no revision {revision!r}", path=where, field="revision") from None
    except RepositoryNotFoundError:
        raise ConfigError("no such dataset repo on the Hub (or no access to it: set HF_TOKEN)", path=where) from None
    except LocalEntryNotFoundError as e:
        raise ConfigError(f"repo id not in the local Hugging Face cache, and it cannot be downloaded now: {e}",
                          path=where) from None
    except OSError as e:  # the client's HTTP errors, a full disk
        raise ConfigError(f"download failed: {e}", path=where) from None


def fetch_lerobot(repo_id: str, revision: str | None, config: LeRobotConfig, **hub: Any) -> LeRobotSource:
    """Download `meta/` of the dataset repo `repo_id` at `revision`, then the files of the episodes
    `config.episodes` selects (see the module docstring), and return the source over the cached snapshot.
    `hub`: `snapshot_download` options (`cache_dir`, `endpoint`, `token`). Raises `ConfigError` (repo,
    revision, cache) and what `LeRobotSource` raises for its meta."""
    meta = _download(repo_id, revision, ["meta/*"], **hub)
    provenance = {"repo_id": repo_id, "revision": revision or "main", "commit": meta.name}
    source = LeRobotSource(replace(config, root=meta, revision=None, hub=provenance))
    wanted = source.episode_files()
    if wanted:
        _download(repo_id, meta.name, [glob.escape(p) for p in wanted], **hub)
    return source


def open_lerobot(path: str, config: LeRobotConfig, **hub: Any) -> LeRobotSource:
    """The source for the CLI's PATH: a dataset folder when one exists there, else a Hub dataset repo id
    (`ORG/NAME[@REVISION]`, fetched with `fetch_lerobot`). Raises `ConfigError` when it is neither."""
    if Path(path).is_dir():
        return LeRobotSource(replace(config, root=path))
    spec = parse_repo_spec(path)
    if spec is None:
        raise ConfigError("LeRobot dataset folder not found (nor a Hub repo id ORG/NAME[@REVISION])", path=path)
    return fetch_lerobot(spec[0], spec[1], config, **hub)
