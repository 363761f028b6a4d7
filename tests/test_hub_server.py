"""The Hub double of `tests/hubserver.py` (issue 23, item 1) conforms to what the real `huggingface_hub` client
expects: repos made with `create_repo`, folders uploaded with `upload_folder` (unchanged files skipped), tags,
branches and refs, `HfFileSystem` listings and ranged reads, `hf_hub_download` / `snapshot_download` by tag and
by commit prefix, a stale parent commit refused with 412, and missing repos, revisions and files raised as the
client's own exceptions. The server's `tree` pages hold 3 entries here, so every listing follows `Link`
pagination. In-process, the client reaches 127.0.0.1 only (`hubserver.loopback_client`)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hubserver import git_blob_sha, running_hub

hf = pytest.importorskip("huggingface_hub")
from huggingface_hub import (  # noqa: E402
    CommitOperationAdd,
    CommitOperationDelete,
    HfApi,
    HfFileSystem,
    hf_hub_download,
    snapshot_download,
)
from huggingface_hub.errors import (  # noqa: E402
    EntryNotFoundError,
    HfHubHTTPError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

REPO = "org/conformance"
ODD = "odd dir/é+#%20.txt"  # percent-encoded by the client in every URL


def _files(version: int) -> dict[str, bytes]:
    """The folder uploaded as commit `version` (1 or 2): only a.txt changes between the two; every file's
    bytes differ from the others' (the client's cache deduplicates by ETag)."""
    rng = __import__("random").Random(7)
    return {"a.txt": f"a, version {version}\n".encode(), "README.md": b"---\nlicense: mit\n---\n# conformance\n",
            "sub/b.bin": bytes(rng.randrange(256) for _ in range(5000)), "sub/deep/c.json": b'{"c": 1}',
            "sub/deep/d.json": b'{"d": 2}', ODD: b"odd name\n"}


def _write(folder: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return folder


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    with running_hub(tmp_path_factory.mktemp("hub"), page_size=3) as server:
        yield server


@pytest.fixture(scope="module")
def api(hub):
    return HfApi(endpoint=hub.endpoint, token=False)


@pytest.fixture(scope="module")
def repo(hub, api, tmp_path_factory):
    """REPO with two commits (`upload_folder` of `_files(1)`, then of `_files(2)`) and tag v3.0 on the first."""
    folder = tmp_path_factory.mktemp("folder")
    url = api.create_repo(REPO, repo_type="dataset")
    assert url == f"{hub.endpoint}/datasets/{REPO}" and url.repo_id == REPO
    first = api.upload_folder(folder_path=_write(folder, _files(1)), repo_id=REPO, repo_type="dataset")
    commits_before = len(hub.requests("POST", f"/api/datasets/{REPO}/commit/"))
    second = api.upload_folder(folder_path=_write(folder, _files(2)), repo_id=REPO, repo_type="dataset")
    assert len(hub.requests("POST", f"/api/datasets/{REPO}/commit/")) == commits_before + 1
    api.create_tag(REPO, tag="v3.0", revision=first.oid, repo_type="dataset")
    return {"first": first.oid, "second": second.oid, "folder": folder}


def test_create_repo_twice_and_upload_folder_skips_unchanged_files(hub, api, repo):
    """A second `create_repo` answers 409 (with `exist_ok`, the repo's URL); the second upload commits only
    a.txt (every other file's last commit is the first upload); a third upload commits nothing."""
    again = api.create_repo(REPO, repo_type="dataset", exist_ok=True)
    assert again == f"{hub.endpoint}/datasets/{REPO}"
    with pytest.raises(HfHubHTTPError) as e:
        api.create_repo(REPO, repo_type="dataset")
    assert e.value.response.status_code == 409
    tree = {f.path: f for f in api.list_repo_tree(REPO, repo_type="dataset", recursive=True, expand=True)}
    assert tree["a.txt"].last_commit.oid == repo["second"]
    assert {p for p, f in tree.items() if f.last_commit.oid == repo["first"]} == \
        set(_files(1)) - {"a.txt"} | {"sub", "sub/deep", "odd dir"}
    assert all(tree[p].blob_id == git_blob_sha(data) and tree[p].size == len(data) for p, data in _files(2).items())
    third = api.upload_folder(folder_path=repo["folder"], repo_id=REPO, repo_type="dataset")
    assert third.oid == repo["second"]
    assert [c.commit_id for c in api.list_repo_commits(REPO, repo_type="dataset")][:2] == \
        [repo["second"], repo["first"]]


def test_refs_tags_branches_and_revisions(api, repo):
    """Tags and branches (a `refs/convert/...` one listed among the converts) resolve, as do a full sha and a
    unique prefix of one; a tag made twice is a 409 (accepted with `exist_ok`)."""
    api.create_branch(REPO, branch="dev", revision="v3.0", repo_type="dataset")
    api.create_branch(REPO, branch="refs/convert/parquet", repo_type="dataset")
    with pytest.raises(HfHubHTTPError) as e:
        api.create_tag(REPO, tag="v3.0", repo_type="dataset")
    assert e.value.response.status_code == 409
    api.create_tag(REPO, tag="v3.0", repo_type="dataset", exist_ok=True)
    refs = api.list_repo_refs(REPO, repo_type="dataset")
    assert {(b.name, b.target_commit) for b in refs.branches} == {("main", repo["second"]), ("dev", repo["first"])}
    assert [(t.name, t.ref, t.target_commit) for t in refs.tags] == [("v3.0", "refs/tags/v3.0", repo["first"])]
    assert [(c.name, c.ref) for c in refs.converts] == [("parquet", "refs/convert/parquet")]
    for rev, sha in [("v3.0", repo["first"]), ("dev", repo["first"]), (repo["first"], repo["first"]),
                     (repo["second"][:7], repo["second"]), ("refs/convert/parquet", repo["second"]),
                     (None, repo["second"])]:
        info = api.dataset_info(REPO, revision=rev, files_metadata=True)
        assert info.sha == sha, rev
    assert info.card_data["license"] == "mit"
    assert {s.rfilename: s.size for s in info.siblings if s.rfilename != ".gitattributes"} == \
        {p: len(d) for p, d in _files(2).items()}
    files = api.list_repo_files(REPO, repo_type="dataset", revision="v3.0")
    assert sorted(files) == sorted(set(_files(1)) | {".gitattributes"})
    paths = api.get_paths_info(REPO, ["a.txt", "sub", "missing.txt", ODD], repo_type="dataset", revision="v3.0")
    assert [(type(p).__name__, p.path) for p in paths] == [("RepoFile", "a.txt"), ("RepoFolder", "sub"),
                                                            ("RepoFile", ODD)]


def test_hffilesystem_lists_and_reads_byte_ranges(hub, repo):
    """`ls`, `find` (tree pages followed through their `Link` header), `info`, `open` with seeks (ranged GETs
    answered 206), `cat_file` of an odd name, and a read at a tag."""
    fs = HfFileSystem(endpoint=hub.endpoint, token=False, skip_instance_cache=True)
    root = f"datasets/{REPO}"
    files = _files(2)
    assert fs.ls(root, detail=False) == sorted(f"{root}/{p}" for p in (".gitattributes", "README.md", "a.txt",
                                                                       "odd dir", "sub"))
    pages_before = len(hub.requests("GET", "cursor="))
    assert fs.find(root) == sorted(f"{root}/{p}" for p in [*files, ".gitattributes"])
    assert len(hub.requests("GET", "cursor=")) > pages_before  # pagination followed
    info = fs.info(f"{root}/sub/b.bin")
    assert (info["size"], info["type"], info["blob_id"]) == (5000, "file", git_blob_sha(files["sub/b.bin"]))
    assert info["lfs"] is None and info["xet_hash"] is None  # a regular file: read over plain HTTP
    assert fs.info(f"{root}/sub/deep")["type"] == "directory"
    ranged_before = len([r for r in hub.log if r[2]])
    with fs.open(f"{root}/sub/b.bin", block_size=256) as f:
        f.seek(1000)
        assert f.read(100) == files["sub/b.bin"][1000:1100]
        f.seek(4990)
        assert f.read() == files["sub/b.bin"][4990:]
    ranges = [r[2] for r in hub.log[ranged_before:] if r[2]]
    assert ranges and all(r.startswith("bytes=") for r in ranges)
    assert fs.cat_file(f"{root}/{ODD}") == files[ODD]
    assert fs.cat_file(f"{root}@v3.0/a.txt") == _files(1)["a.txt"]
    assert not fs.exists(f"{root}/sub/nothing.bin")
    with pytest.raises(FileNotFoundError):
        fs.info(f"{root}/nothing")


def test_hf_hub_download_and_snapshot_download(hub, repo, tmp_path):
    """`hf_hub_download` caches the file under its ETag (the git blob sha); `snapshot_download` at the tag
    and at a sha prefix gives the first upload's files; nothing goes near the Xet routes."""
    files = _files(2)
    path = hf_hub_download(REPO, "sub/b.bin", repo_type="dataset", endpoint=hub.endpoint, cache_dir=tmp_path)
    assert Path(path).read_bytes() == files["sub/b.bin"]
    assert Path(os.path.realpath(path)).name == git_blob_sha(files["sub/b.bin"])
    assert Path(hf_hub_download(REPO, ODD, repo_type="dataset", endpoint=hub.endpoint,
                                cache_dir=tmp_path)).read_bytes() == files[ODD]
    for rev in ("v3.0", repo["first"][:10]):
        snap = Path(snapshot_download(REPO, repo_type="dataset", revision=rev, endpoint=hub.endpoint,
                                      cache_dir=tmp_path / rev))
        assert snap.name == repo["first"]
        assert {p: (snap / p).read_bytes() for p in _files(1)} == _files(1)
    head = hub.requests("HEAD", f"/datasets/{REPO}/resolve/")
    assert head and not hub.requests("GET", "xet-") and not hub.requests("POST", "xet-")


def test_commit_on_a_stale_parent_is_refused(api, repo):
    """`parent_commit` that is no longer the head answers 412; on the head it commits, and deletions of a
    file and a folder apply (deleting a missing file is EntryNotFoundError)."""
    with pytest.raises(HfHubHTTPError) as e:
        api.create_commit(REPO, [CommitOperationAdd("late.txt", b"late")], commit_message="late",
                          repo_type="dataset", revision="dev", parent_commit=repo["second"])
    assert e.value.response.status_code == 412
    done = api.create_commit(REPO, [CommitOperationAdd("late.txt", b"late"), CommitOperationDelete("a.txt"),
                                    CommitOperationDelete("sub/deep/")],
                             commit_message="late", repo_type="dataset", revision="dev", parent_commit=repo["first"])
    files = api.list_repo_files(REPO, repo_type="dataset", revision=done.oid)
    assert sorted(files) == sorted([".gitattributes", "README.md", "late.txt", "sub/b.bin", ODD])
    with pytest.raises(EntryNotFoundError):
        api.delete_file("no-such-file.txt", REPO, repo_type="dataset", revision="dev")


def test_missing_repo_revision_and_file_raise_the_clients_errors(hub, api, repo, tmp_path):
    kw = {"repo_type": "dataset", "endpoint": hub.endpoint, "cache_dir": tmp_path}
    with pytest.raises(RepositoryNotFoundError):
        api.dataset_info("org/absent")
    with pytest.raises(RevisionNotFoundError):
        api.dataset_info(REPO, revision="no-such-branch")
    with pytest.raises(RevisionNotFoundError):
        api.dataset_info(REPO, revision="0000000")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("org/absent", "a.txt", **kw)
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(REPO, "a.txt", revision="no-such-tag", **kw)
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(REPO, "no/such/file.txt", **kw)
    with pytest.raises(EntryNotFoundError):
        list(api.list_repo_tree(REPO, "no-such-folder", repo_type="dataset"))
    with pytest.raises(ValueError, match="Invalid metadata in README.md"):  # validate-yaml's 400
        api.upload_file(path_or_fileobj=b"---\nlicense: [mit\n---\n", path_in_repo="README.md", repo_id=REPO,
                        repo_type="dataset")
    fs = HfFileSystem(endpoint=hub.endpoint, token=False, skip_instance_cache=True)
    with pytest.raises(FileNotFoundError):
        fs.ls("datasets/org/absent")


def test_the_in_process_client_stays_offline_for_other_hosts(hub):
    """`loopback_client` lets 127.0.0.1 through and nothing else: the library's offline refusal still
    answers for any other host (raised before any connection is tried)."""
    if not hf.constants.is_offline_mode():
        pytest.skip("HF_HUB_OFFLINE is not set in this run")
    with pytest.raises(OfflineModeIsEnabled):
        hf.get_session().get("https://huggingface.co/api/whoami-v2")
    assert hf.get_session().get(f"{hub.endpoint}/api/whoami-v2").json()["name"] == hub.user
