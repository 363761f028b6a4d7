"""Stores and folders pushed to a Hugging Face Hub repository (`hf://datasets/ORG/NAME[@BRANCH][/FOLDER]`).

The Hub is git: every upload is a commit, a repo that commits too often is throttled, and one commit should
stay small (the Hub recommends at most ~100-1000 files; `huggingface_hub`'s own multi-commit uploader starts
at 256 files and keeps at most 100 MiB of regular, base64-encoded file content in one commit request; a folder
should hold under 10,000 entries). So a push here is a few `create_commit` calls of `CommitOperationAdd` lists
within `CommitLimits`, not one commit per file:

1. the repo is made when it does not exist (`create_repo(exist_ok=True)`; a named branch too);
2. the remote listing (sizes, git blob ids, LFS sha256) is compared with the local files: a file already there
   with the same content is skipped, which is what makes a push killed midway resumable (rerun it);
3. the data files go up in batches, each commit chained on the previous one (`parent_commit`: a concurrent
   writer makes the push fail with 412 instead of interleaving); a replaced store's old `manifest.json` is
   deleted in the first batch, so the repo never shows a complete store whose files are changing;
4. the listing is checked again against the local files (every data file, by blob id or LFS sha256);
5. one last commit adds `checksums.json`, the dataset card (`README.md`, `stores.hub_card`) and, in the same
   atomic commit, `manifest.json`: a reader sees either no manifest or a complete, checked store.

The repo's own files (`.gitattributes`, and a `README.md` that shardyard did not write) are never deleted or
overwritten. `push_files` does all of this for any folder (the files it names, chosen ones in the last commit);
`push_lerobot` uploads a LeRobot dataset that way and tags it with its codebase version.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from shardyard.errors import ConfigError, StoreError

__all__ = ["HUB_OWN", "CommitLimits", "HubTarget", "PushResult", "git_blob_sha1", "push_files", "push_lerobot",
           "push_store", "same_content"]

log = logging.getLogger(__name__)

HUB_OWN = (".gitattributes", "README.md")  # files a repo keeps at its root for itself, not part of a store
REGULAR_MAX = 10 * 1000 * 1000  # larger files always go to the Hub's LFS/Xet storage, outside the commit request


@dataclass
class CommitLimits:
    """How an upload is split into Hub commits.

    files: files per commit (the client's multi-commit uploader starts at 256, its largest batch is 1,000).
    bytes: bytes per commit, all files counted (bounds what a kill mid-commit loses). regular_bytes: bytes of
    files under 10 MB per commit (those the Hub may keep as regular git blobs, sent base64 inside the commit
    request; the client's budget is 100 MiB). folder_entries: most entries one folder may hold (the Hub's
    recommendation: under 10,000). Raises `ConfigError` for a limit under 1.
    """

    files: int = 256
    bytes: int = 1 << 30
    regular_bytes: int = 100 << 20
    folder_entries: int = 10_000

    def __post_init__(self) -> None:
        for name in ("files", "bytes", "regular_bytes", "folder_entries"):
            if getattr(self, name) < 1:
                raise ConfigError(f"commit limit {name} must be >= 1, got {getattr(self, name)}", field=name)

    def batches(self, sizes: dict[str, int]) -> list[list[str]]:
        """`sizes` (name -> bytes, in upload order) cut into consecutive batches within the limits (a single
        file over a byte limit is a batch of its own)."""
        out: list[list[str]] = []
        batch: list[str] = []
        total = regular = 0
        for name, size in sizes.items():
            small = size if size <= REGULAR_MAX else 0
            if batch and (len(batch) >= self.files or total + size > self.bytes
                          or regular + small > self.regular_bytes):
                out.append(batch)
                batch, total, regular = [], 0, 0
            batch.append(name)
            total, regular = total + size, regular + small
        return out + ([batch] if batch else [])

    def check_folders(self, names: list[str], where: str) -> None:
        """Raise `StoreError` naming the first folder of `names` (repo paths) with more than `folder_entries`
        direct entries (files and subfolders)."""
        entries: dict[str, set[str]] = {}
        for name in names:
            parts = name.split("/")
            for i in range(len(parts)):
                entries.setdefault("/".join(parts[:i]), set()).add(parts[i])
        for folder, children in sorted(entries.items()):
            if len(children) > self.folder_entries:
                raise StoreError(f"folder {folder or '/'!r} would hold {len(children)} entries; the Hub asks for "
                                 f"at most {self.folder_entries} per folder", path=where)


def git_blob_sha1(path: Path, bufsize: int = 1 << 20) -> str:
    """The git object id of the file at `path` (sha1 of `blob <size>`, a NUL byte and the bytes): what the Hub
    lists as a regular file's `oid`."""
    h = hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as f:
        while chunk := f.read(bufsize):
            h.update(chunk)
    return h.hexdigest()


def same_content(entry: Any, path: Path, sha256: str | None = None) -> bool:
    """Whether the remote file `entry` (a `huggingface_hub.RepoFile`, or None when absent) holds the bytes of
    the local file at `path`: same size, and the same LFS sha256 (`sha256` when known, else computed) or, for
    a regular file, the same git blob id."""
    if entry is None or entry.size != path.stat().st_size:
        return False
    if entry.lfs is not None:
        if sha256 is None:
            from shardyard.stores.manifest import sha256_file

            sha256 = sha256_file(path)
        return entry.lfs.sha256 == sha256
    return entry.blob_id == git_blob_sha1(path)


@dataclass
class HubTarget:
    """A folder of a Hub repo: `repo_id` ("org/name"), `repo_type` ("dataset", "model", "space"), `revision`
    (a branch; None for the default one), `path` (folder inside the repo, "" for its root), and the endpoint
    and token of the client (None: `huggingface_hub`'s defaults, HF_ENDPOINT and the stored token)."""

    repo_id: str
    repo_type: str = "dataset"
    revision: str | None = None
    path: str = ""
    endpoint: str | None = None
    token: Any = None

    @classmethod
    def from_url(cls, url: str, endpoint: str | None = None, token: Any = None) -> "HubTarget":
        """The target of `hf://[datasets/]ORG/NAME[@BRANCH][/FOLDER]` (the `hf://` prefix may be left out).
        Raises `ConfigError` for a URL that names no repo."""
        from huggingface_hub.utils import parse_hf_uri

        text = url if url.startswith("hf://") else f"hf://{url}"
        try:
            uri = parse_hf_uri(text)
        except ValueError as e:
            raise ConfigError(f"not a Hub repo URL: {e}", path=url) from None
        if uri.type not in ("dataset", "model", "space"):
            raise ConfigError(f"a store goes to a dataset, model or space repo, not a {uri.type}", path=url)
        return cls(uri.id, uri.type, uri.revision, uri.path_in_repo.strip("/"), endpoint, token)

    @classmethod
    def of_repo(cls, url: str, endpoint: str | None = None, token: Any = None) -> "HubTarget | None":
        """`from_url`, or None when `url` names no dataset, model or space repo (e.g. an `hf://buckets/...`
        path, which has no commits: plain files, as in any bucket)."""
        try:
            return cls.from_url(url, endpoint, token)
        except ConfigError:
            return None

    @property
    def url(self) -> str:
        """`hf://[datasets/|spaces/]ORG/NAME[@BRANCH][/FOLDER]`."""
        kind = "" if self.repo_type == "model" else f"{self.repo_type}s/"
        rev = f"@{self.revision}" if self.revision else ""
        return f"hf://{kind}{self.repo_id}{rev}" + (f"/{self.path}" if self.path else "")

    @property
    def api(self) -> Any:
        """An `HfApi` for this target's endpoint and token."""
        from huggingface_hub import HfApi

        return HfApi(endpoint=self.endpoint, token=self.token)

    @property
    def branch(self) -> str:
        """The branch commits go to: `revision`, or "main"."""
        return self.revision or "main"

    def name(self, rel: str) -> str:
        """The repo path of `rel`, a name relative to the target folder."""
        return f"{self.path}/{rel}" if self.path else rel

    def ensure(self) -> str:
        """Make the repo (and the branch) when missing; returns the branch's head commit."""
        from huggingface_hub.errors import RevisionNotFoundError

        api = self.api
        api.create_repo(self.repo_id, repo_type=self.repo_type, exist_ok=True)
        try:
            return api.repo_info(self.repo_id, repo_type=self.repo_type, revision=self.branch).sha
        except RevisionNotFoundError:
            api.create_branch(self.repo_id, branch=self.branch, repo_type=self.repo_type, exist_ok=True)
            return api.repo_info(self.repo_id, repo_type=self.repo_type, revision=self.branch).sha

    def listing(self, revision: str) -> dict[str, Any]:
        """Name (relative to the target folder) -> `RepoFile` of every file below it at `revision` (a commit);
        empty when the folder does not exist."""
        from huggingface_hub import RepoFile
        from huggingface_hub.errors import EntryNotFoundError

        prefix = self.path + "/" if self.path else ""
        try:
            tree = list(self.api.list_repo_tree(self.repo_id, path_in_repo=self.path or None, recursive=True,
                                                revision=revision, repo_type=self.repo_type))
        except EntryNotFoundError:
            return {}
        return {f.path[len(prefix):]: f for f in tree if isinstance(f, RepoFile) and f.path.startswith(prefix)}

    def card_is_ours(self, revision: str) -> bool:
        """Whether `README.md` at the repo root may be (re)written by shardyard: absent, or tagged `shardyard`
        in its YAML header (a card the owner wrote is kept)."""
        from huggingface_hub.errors import EntryNotFoundError

        if self.path:
            return False  # a store in a subfolder: the repo's card is about more than it
        try:
            paths = self.api.get_paths_info(self.repo_id, ["README.md"], revision=revision, repo_type=self.repo_type)
        except EntryNotFoundError:
            return True
        if not paths:
            return True
        data = self.api.repo_info(self.repo_id, repo_type=self.repo_type, revision=revision).card_data
        tags = (data.to_dict() if data is not None else {}).get("tags") or []
        return "shardyard" in tags


class Committer:
    """Commits to `target`'s branch one after the other, each on the previous one (`parent_commit`), calling
    `on_commit(n)` after the n-th (1-based) commit of this run."""

    def __init__(self, target: HubTarget, head: str, on_commit: Callable[[int], None] | None = None) -> None:
        self.target, self.head, self.on_commit, self.count = target, head, on_commit, 0

    def commit(self, operations: list[Any], message: str) -> None:
        """One `create_commit` of `operations` on the current head (412 from the Hub when another writer
        committed meanwhile); the new commit becomes the head."""
        t = self.target
        info = t.api.create_commit(t.repo_id, operations, commit_message=message, repo_type=t.repo_type,
                                   revision=t.branch, parent_commit=self.head)
        self.head = info.oid
        self.count += 1
        log.info("commit %d (%d operation(s)): %s", self.count, len(operations), info.oid)
        if self.on_commit is not None:
            self.on_commit(self.count)


def upload_batches(local: Path, names: list[str], target: HubTarget, committer: Committer, limits: CommitLimits,
                   first: list[Any] | None = None, what: str = "data") -> int:
    """Commit the local files `names` (relative to `local`) in batches within `limits`; `first`: operations
    (e.g. deletions) added to the first commit. Returns the bytes uploaded."""
    from huggingface_hub import CommitOperationAdd

    sizes = {n: (local / n).stat().st_size for n in names}
    batches = limits.batches(sizes)
    for i, batch in enumerate(batches):
        ops = list(first or []) if i == 0 else []
        ops += [CommitOperationAdd(target.name(n), str(local / n)) for n in batch]
        committer.commit(ops, f"shardyard: upload {what} ({i + 1}/{len(batches)}, {len(batch)} file(s))")
    return sum(sizes.values())


def check_uploaded(local: Path, names: list[str], remote: dict[str, Any], sha256: dict[str, str],
                   where: str) -> None:
    """Raise `StoreError` naming the first of `names` whose remote copy (`remote`, a fresh listing) is missing
    or differs from the local file (sha256 from the store's checksums where known)."""
    for n in names:
        if not same_content(remote.get(n), local / n, sha256.get(n)):
            got = remote.get(n)
            raise StoreError("the remote copy does not match the local file after the upload "
                             f"({'absent' if got is None else f'{got.size} bytes, oid {got.blob_id}'})",
                             path=f"{where.rstrip('/')}/{n}")


@dataclass
class PushResult:
    """Files uploaded and skipped (already there with the same content), bytes uploaded, commits made and
    the branch's head commit after one push."""

    uploaded: int
    skipped: int
    bytes: int
    commits: int
    head: str


def _same_bytes(entry: Any, data: bytes) -> bool:
    return entry is not None and entry.lfs is None and \
        entry.blob_id == hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def push_files(local: Path, names: list[str], target: HubTarget, *, last: tuple[str, ...] = (),
               sha256: dict[str, str] | None = None, card: bytes | None = None, guard: str | None = None,
               limits: CommitLimits | None = None, on_commit: Callable[[int], None] | None = None) -> PushResult:
    """Upload the files `names` of the folder `local` to `target` as the module docstring describes: every
    name not in `last` in batches, checked, then `last` with the dataset card `card` (as `README.md`, when
    the repo has none or one shardyard wrote) in one final commit. Files already there with the same content
    are skipped (`sha256`: known sha256 by name, spares hashing LFS files again). `guard`: a file (the
    manifest) whose remote copy, when it differs, is deleted in the first data commit. Raises `StoreError`
    when a folder would hold too many entries or an upload does not match."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    limits, sha256 = limits or CommitLimits(), sha256 or {}
    names = sorted(set(names))
    limits.check_folders([target.name(n) for n in names] + ["README.md"] * bool(card), str(local))
    head = target.ensure()
    remote = target.listing(head)

    def changed(n: str) -> bool:
        return not same_content(remote.get(n), local / n, sha256.get(n))

    data = [n for n in names if n not in last and changed(n)]
    final = [n for n in last if n in names and changed(n)]
    first = [CommitOperationDelete(target.name(guard))] if guard in remote and guard in final and data else []
    committer = Committer(target, head, on_commit)
    sent = upload_batches(local, data, target, committer, limits, first)
    if data:
        check_uploaded(local, data, target.listing(committer.head), sha256, target.url)
    ops = [CommitOperationAdd(target.name(n), str(local / n)) for n in final]
    if card is not None and not _same_bytes(remote.get("README.md"), card) and target.card_is_ours(head):
        ops.insert(0, CommitOperationAdd("README.md", card))
    if ops:
        committer.commit(ops, f"shardyard: {', '.join(final + ['README.md'] * (len(ops) > len(final)))}")
    sent += sum((local / n).stat().st_size for n in final)
    return PushResult(len(data) + len(final), len(names) - len(data) - len(final), sent, committer.count,
                      committer.head)


def push_store(local: Path, sums: dict[str, Any], target: HubTarget, *, limits: CommitLimits | None = None,
               on_commit: Callable[[int], None] | None = None) -> PushResult:
    """Push the complete local store `local`, whose `checksums.json` (`sums`) is written, to `target`: its
    files in batches, then `checksums.json`, the dataset card and `manifest.json` in one last commit (see
    the module docstring). Raises `StoreError` as `push_files` does."""
    import json

    from shardyard.stores.checksums import CHECKSUMS
    from shardyard.stores.hub_card import store_card
    from shardyard.stores.manifest import MANIFEST, read_manifest_dict

    manifest = read_manifest_dict(local)
    stats = json.loads((local / "stats.json").read_text()) if (local / "stats.json").is_file() else None
    card = store_card(manifest, stats, target.repo_id, target.url) if not target.path else None
    names = [f["name"] for f in sums["files"]] + [CHECKSUMS]
    return push_files(local, names, target, last=(CHECKSUMS, MANIFEST), card=card, guard=MANIFEST,
                      sha256={f["name"]: f["sha256"] for f in sums["files"]}, limits=limits, on_commit=on_commit)


def push_lerobot(folder: str | Path, repo_id: str, *, endpoint: str | None = None, token: Any = None,
                 limits: CommitLimits | None = None) -> PushResult:
    """Upload the LeRobot dataset at `folder` (an `export lerobot`) to the Hub dataset repo `repo_id`, made when
    missing: data and videos in a few commits, then `meta/` and a dataset card in one last commit
    (`push_files`: files already there are skipped, so a killed upload is rerun), then the tag of its codebase
    version (`v3.0`), moved to the new head: `LeRobotDataset(repo_id)` refuses a repo without it. `endpoint`
    and `token` default to `huggingface_hub`'s (HF_ENDPOINT, HF_TOKEN). Raises `ConfigError` when `folder`
    has no readable `meta/info.json`."""
    import contextlib
    import json

    from huggingface_hub.errors import RevisionNotFoundError

    from shardyard.stores.hub_card import lerobot_card

    folder = Path(folder)
    try:
        info = json.loads((folder / "meta" / "info.json").read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"not a LeRobot dataset folder: {e}", path=str(folder)) from None
    target = HubTarget(repo_id, "dataset", endpoint=endpoint, token=token)
    names = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    result = push_files(folder, names, target, last=tuple(n for n in names if n.startswith("meta/")),
                        card=lerobot_card(info, repo_id), limits=limits)
    api, tag = target.api, str(info.get("codebase_version") or "v3.0")
    with contextlib.suppress(RevisionNotFoundError):
        api.delete_tag(repo_id, tag=tag, repo_type="dataset")
    api.create_tag(repo_id, tag=tag, revision=result.head, repo_type="dataset")
    return result
