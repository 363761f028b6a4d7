"""A Hugging Face Hub double on 127.0.0.1 for the tests: the HTTP routes `huggingface_hub` 2.x calls (read from
its source: `hf_api.py`, `_commit_api.py`, `_upload_pipeline.py`, `file_download.py`, `hf_file_system.py`,
`utils/_http.py`), served by a stdlib `ThreadingHTTPServer` and driven by the real, unpatched client.

`RepoStore` keeps the repos in a directory: each commit is a JSON snapshot `{path: [blob, size]}` with its
parent; blobs are stored once, under their git sha1 (sha1 of `blob <size>`, a NUL byte and the bytes: the oid
and the ETag of a regular file, which the client compares with its own to skip unchanged files); branches and
tags name commits. Revisions resolve as a branch, a tag, a full commit sha or a unique prefix of one (4 hex
digits or more).

Routes (`{t}` is `model`, `dataset` or `space`; `{rev}` is percent-encoded, or `refs/convert/x` / `refs/pr/N`):
  POST /api/repos/create (409 with `url` when the repo exists), DELETE /api/repos/delete, GET /api/whoami-v2,
  POST /api/validate-yaml (the YAML header of a README.md; errors answer 400),
  GET  /api/{t}s/{ns}/{name}[/revision/{rev}]    id, sha, siblings (`?blobs=true`: sizes, blob ids), cardData
  GET  /api/{t}s/{ns}/{name}/refs                branches, tags, converts (`?include_prs=1`: pullRequests)
  GET  /api/{t}s/{ns}/{name}/tree/{rev}[/{path}] `recursive`, `expand`, pages of `page_size` entries (at most
                                                 50 with `expand`) linked by a `Link: <...>; rel="next"` header
  POST /api/{t}s/{ns}/{name}/paths-info/{rev}    form-encoded `paths` (repeated) and `expand`
  GET  /api/{t}s/{ns}/{name}/commits/{rev}       the history, newest first
  POST /api/{t}s/{ns}/{name}/preupload/{rev}     `uploadMode: "regular"`, `shouldIgnore: false`, existing `oid`
  POST /api/{t}s/{ns}/{name}/commit/{rev}        NDJSON header/file/deletedFile/deletedFolder; a `parentCommit`
                                                 that is not the branch head answers 412
  POST|DELETE /api/{t}s/{ns}/{name}/tag/{rev|tag}, POST|DELETE .../branch/{name} (`startingPoint`)
  GET|HEAD /[datasets/|spaces/]{ns}/{name}/resolve/{rev}/{path}   `Range` (206, 416), `X-Repo-Commit`, quoted
                                                 git-sha1 `ETag`, `Content-Length`; no Xet headers
Errors carry `X-Error-Code` (`RepoNotFound`, `RevisionNotFound`, `EntryNotFound`) and `X-Error-Message`, which
the client maps to `RepositoryNotFoundError`, `RevisionNotFoundError` and `RemoteEntryNotFoundError`.

Why no Xet: the client uploads through Xet only the files that `preupload` marks "lfs", and downloads through
Xet only files whose `resolve` answer carries `X-Xet-Hash`. Answering "regular" and sending no Xet header keeps
the client's real upload and download paths (base64 in the commit, ranged GETs) without disabling Xet; the
`xet-*-token` routes answer 501, so a client change that starts calling them fails loudly.

Offline mode: the tests run with HF_HUB_OFFLINE=1, which `huggingface_hub` reads once at import; its shared
HTTP client then refuses every request in a request hook. Subprocesses (the CLI) get their own environment from
`HubServer.client_env` (HF_ENDPOINT, HF_HUB_OFFLINE=0, HF_HOME in a temp folder, telemetry off). In-process,
`loopback_client()` installs, through the library's public `set_client_factory`, a client whose request hook
lets 127.0.0.1 through and runs the library's own hooks (the offline refusal among them) for every other host:
the in-process client reaches this server and nothing else, and no constant of the library is patched. The
endpoint is passed explicitly (`HfApi(endpoint=)`, `hf_hub_download(endpoint=)`, the `endpoint` storage option
of `hf://`, which fsspec's configuration can supply: `FSSPEC_HF_ENDPOINT` or `fsspec.config.conf["hf"]`),
because HF_ENDPOINT is read at import too.

Use: a module fixture `with running_hub(tmp_path_factory.mktemp("hub")) as hub: yield hub` (server and
loopback client; a request the server failed on fails the fixture at teardown), then `HfApi(endpoint=
hub.endpoint, token=False)` in-process, `hub.client_env(tmp)` for a subprocess, and `hub.log` /
`hub.requests(method, part)` to check what the client asked for (e.g. that frame reads are ranged GETs).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
import traceback
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import parse_qs, quote, unquote, urlsplit

__all__ = ["HubError", "HubServer", "RepoStore", "git_blob_sha", "loopback_client", "running_hub"]

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}")
HEX_PREFIX = re.compile(r"[0-9a-f]{4,40}")
GITATTRIBUTES = b"# written by the test hub server at repo creation, as the Hub writes one\n*.bin binary\n"


class HubError(Exception):
    """An error answer: HTTP `status`, the Hub's `X-Error-Code` (`code`), extra JSON body fields and headers."""

    def __init__(self, status: int, message: str, code: str | None = None, *, extra: dict | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code
        self.extra, self.headers = extra or {}, headers or {}


def git_blob_sha(data: bytes) -> str:
    """The git object id of a blob holding `data` (what the Hub reports as a regular file's oid and ETag)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def card_data(readme: str) -> dict | None:
    """The YAML header of a README.md (between `---` lines) as a dict, None without one. Raises `ValueError`
    when the YAML does not parse or is not a mapping (what the Hub's validate-yaml refuses)."""
    import yaml

    if not readme.startswith("---"):
        return None
    end = readme.find("\n---", 3)
    if end < 0:
        raise ValueError("the YAML header of README.md has no closing '---'")
    try:
        meta = yaml.safe_load(readme[3:end])
    except yaml.YAMLError as e:
        raise ValueError(f"invalid YAML in README.md: {e}") from None
    if meta is not None and not isinstance(meta, dict):
        raise ValueError("the YAML header of README.md must be a mapping")
    return meta


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """`bytes=a-b`, `bytes=a-` or `bytes=-n` -> the first and last byte served; None when unsatisfiable."""
    m = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", header)
    if not m or m.groups() == ("", ""):
        raise HubError(400, f"unsupported Range header {header!r} (one range, bytes=a-b)")
    a, b = m.groups()
    if a == "":
        start, end = max(size - int(b), 0), size - 1
        return (start, end) if int(b) > 0 and size > 0 else None
    start, end = int(a), min(int(b), size - 1) if b else size - 1
    return (start, end) if start < size and start <= end else None


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(obj, sort_keys=True))
    os.replace(tmp, path)


def _check_path(path: str) -> str:
    """A file path a commit may write: relative, no empty, `.`, `..` or `.git` segment."""
    parts = str(path).split("/")
    if not path or any(p in ("", ".", "..", ".git") or "\\" in p for p in parts):
        raise HubError(400, f"invalid path in repo: {path!r}")
    return path


def _folders(paths: Any) -> set[str]:
    out: set[str] = set()
    for p in paths:
        parts = p.split("/")
        out.update("/".join(parts[:i]) for i in range(1, len(parts)))
    return out


class RepoStore:
    """The repos under `root` (`repos/{t}s/{ns}/{name}/refs.json`, `.../commits/{sha}.json`, `blobs/`).
    Commits, blobs and ref files are written atomically; writers hold one lock, readers none."""

    def __init__(self, root: Path, *, user: str = "test-user") -> None:
        self.root, self.user = Path(root), user
        (self.root / "blobs").mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()

    # -- storage --------------------------------------------------------------------------------------------

    def _dir(self, kind: str, repo_id: str) -> Path:
        ns, _, name = repo_id.partition("/")
        if not (NAME.fullmatch(ns) and NAME.fullmatch(name)) or ".." in repo_id:
            raise HubError(404, f"Repository {repo_id} not found (invalid id)", "RepoNotFound")
        return self.root / "repos" / f"{kind}s" / ns / name

    def _refs(self, kind: str, repo_id: str) -> tuple[Path, dict]:
        d = self._dir(kind, repo_id)
        try:
            return d, json.loads((d / "refs.json").read_text())
        except FileNotFoundError:
            raise HubError(404, f"Repository {kind}s/{repo_id} not found", "RepoNotFound") from None

    @staticmethod
    def _commit(d: Path, sha: str) -> dict:
        return json.loads((d / "commits" / f"{sha}.json").read_text())

    @staticmethod
    def _resolve(d: Path, refs: dict, rev: str) -> str:
        if rev in refs["branches"]:
            return refs["branches"][rev]
        if rev in refs["tags"]:
            return refs["tags"][rev]
        if HEX_PREFIX.fullmatch(rev):
            found = [p.stem for p in (d / "commits").glob(f"{rev}*.json")]
            if len(found) == 1:
                return found[0]
            if found:
                raise HubError(404, f"Invalid rev id: {rev} is ambiguous", "RevisionNotFound")
        raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")

    def _snapshot(self, kind: str, repo_id: str, rev: str) -> tuple[Path, str, dict[str, list]]:
        d, refs = self._refs(kind, repo_id)
        sha = self._resolve(d, refs, rev)
        return d, sha, self._commit(d, sha)["tree"]

    def put_blob(self, data: bytes) -> str:
        sha = git_blob_sha(data)
        path = self.root / "blobs" / sha[:2] / sha
        if not path.exists():
            path.parent.mkdir(exist_ok=True)
            tmp = path.with_name(f".{sha}.{threading.get_ident()}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        return sha

    def read_blob(self, sha: str, start: int = 0, n: int = -1) -> bytes:
        with open(self.root / "blobs" / sha[:2] / sha, "rb") as f:
            f.seek(start)
            return f.read(n)

    def _new_commit(self, d: Path, parent: str | None, tree: dict, title: str, message: str = "") -> str:
        rec = {"parent": parent, "tree": tree, "title": title, "message": message, "date": _now(),
               "authors": [self.user]}
        sha = hashlib.sha1(json.dumps(rec, sort_keys=True).encode()).hexdigest()
        _write_json(d / "commits" / f"{sha}.json", {**rec, "id": sha})
        return sha

    # -- repos and refs -------------------------------------------------------------------------------------

    def create(self, kind: str, repo_id: str) -> bool:
        """Make the repo with a first commit holding `.gitattributes` (as the Hub does); False if it exists."""
        with self.lock:
            d = self._dir(kind, repo_id)
            if (d / "refs.json").exists():
                return False
            (d / "commits").mkdir(parents=True, exist_ok=True)
            blob = self.put_blob(GITATTRIBUTES)
            sha = self._new_commit(d, None, {".gitattributes": [blob, len(GITATTRIBUTES)]}, "initial commit")
            _write_json(d / "refs.json", {"branches": {"main": sha}, "tags": {}, "createdAt": _now()})
            return True

    def delete(self, kind: str, repo_id: str) -> None:
        with self.lock:
            d, _ = self._refs(kind, repo_id)
            shutil.rmtree(d)

    def refs(self, kind: str, repo_id: str, prs: bool = False) -> dict:
        _, refs = self._refs(kind, repo_id)

        def ref(name: str, full: str, sha: str) -> dict:
            return {"name": name, "ref": full, "targetCommit": sha}

        out = {"branches": [ref(b, f"refs/heads/{b}", s) for b, s in refs["branches"].items()
                            if not b.startswith("refs/")],
               "converts": [ref(b.rsplit("/", 1)[1], b, s) for b, s in refs["branches"].items()
                            if b.startswith("refs/convert/")],
               "tags": [ref(t, f"refs/tags/{t}", s) for t, s in refs["tags"].items()]}
        if prs:
            out["pullRequests"] = []
        return out

    def create_ref(self, kind: str, repo_id: str, which: str, name: str, rev: str) -> None:
        """A new tag or branch `name` at `rev`; 409 when it exists, 404 when `rev` does not resolve."""
        if not name or ".." in name or name.startswith("/") or re.search(r"[\s~^:?*\[\\]", name):
            raise HubError(400, f"invalid {which} name {name!r}")
        with self.lock:
            d, refs = self._refs(kind, repo_id)
            table = refs["tags" if which == "tag" else "branches"]
            if name in table:
                raise HubError(409, f"{which.capitalize()} {name} already exists")
            table[name] = self._resolve(d, refs, rev)
            _write_json(d / "refs.json", refs)

    def delete_ref(self, kind: str, repo_id: str, which: str, name: str) -> None:
        with self.lock:
            d, refs = self._refs(kind, repo_id)
            table = refs["tags" if which == "tag" else "branches"]
            if name not in table:
                raise HubError(404, f"Invalid rev id: {name}", "RevisionNotFound")
            del table[name]
            _write_json(d / "refs.json", refs)

    # -- reading --------------------------------------------------------------------------------------------

    def info(self, kind: str, repo_id: str, rev: str | None, url: str, blobs: bool) -> dict:
        """The repo-info answer at `rev` (default branch when None)."""
        d, refs = self._refs(kind, repo_id)
        sha = self._resolve(d, refs, rev or "main")
        rec = self._commit(d, sha)
        tree = rec["tree"]
        siblings = [{"rfilename": p, **({"size": s, "blobId": b} if blobs else {})}
                    for p, (b, s) in sorted(tree.items())]
        try:
            card = card_data(self.read_blob(tree["README.md"][0]).decode()) if "README.md" in tree else None
        except (ValueError, UnicodeDecodeError):
            card = None
        return {"_id": hashlib.sha1(f"{kind}/{repo_id}".encode()).hexdigest()[:24], "id": repo_id,
                "author": repo_id.split("/")[0], "sha": sha, "private": False, "disabled": False, "gated": False,
                "downloads": 0, "likes": 0, "tags": [], "createdAt": refs["createdAt"], "lastModified": rec["date"],
                "cardData": card, "siblings": siblings, "usedStorage": sum(s for _, s in tree.values())}

    @staticmethod
    def _folder_oid(tree: dict, folder: str) -> str:
        inside = sorted((p, b) for p, (b, _) in tree.items() if p.startswith(folder + "/"))
        return hashlib.sha1(json.dumps(inside).encode()).hexdigest()

    def _entry(self, d: Path, sha: str, tree: dict, path: str, expand: bool) -> dict:
        if path in tree:
            blob, size = tree[path]
            out = {"type": "file", "oid": blob, "size": size, "path": path}
        else:
            out = {"type": "directory", "oid": self._folder_oid(tree, path), "size": 0, "path": path}
        if expand:
            out["lastCommit"] = self._last_commit(d, sha, path, out["oid"])
        return out

    def _last_commit(self, d: Path, sha: str, path: str, oid: str) -> dict:
        """The oldest commit in the unbroken run, back from `sha`, where `path` had this oid."""
        rec = self._commit(d, sha)
        while rec["parent"]:
            parent = self._commit(d, rec["parent"])
            tree = parent["tree"]
            before = tree[path][0] if path in tree else (
                self._folder_oid(tree, path) if path in _folders(tree) else None)
            if before != oid:
                break
            rec = parent
        return {"id": rec["id"], "title": rec["title"], "date": rec["date"]}

    def tree(self, kind: str, repo_id: str, rev: str, path: str, recursive: bool, expand: bool) -> list[dict]:
        """The entries below folder `path` ("" for the root) at `rev`: folders before their content, in path
        order. 404 EntryNotFound when `path` is no folder (a file or nothing)."""
        d, sha, tree = self._snapshot(kind, repo_id, rev)
        folders = _folders(tree)
        if path and path not in folders:
            raise HubError(404, f"Entry not found: {path} is not a folder at {rev}", "EntryNotFound")
        prefix = path + "/" if path else ""
        names = [p for p in list(folders) + list(tree)
                 if p.startswith(prefix) and (recursive or "/" not in p[len(prefix):])]
        return [self._entry(d, sha, tree, p, expand) for p in sorted(names, key=lambda p: p.split("/"))]

    def paths_info(self, kind: str, repo_id: str, rev: str, paths: list[str], expand: bool) -> list[dict]:
        """Entries of the files and folders among `paths` (others are left out, as the Hub does)."""
        d, sha, tree = self._snapshot(kind, repo_id, rev)
        folders = _folders(tree)
        wanted = [p.strip("/") for p in paths]
        return [self._entry(d, sha, tree, p, expand) for p in wanted if p and (p in tree or p in folders)]

    def history(self, kind: str, repo_id: str, rev: str) -> list[dict]:
        d, sha, _ = self._snapshot(kind, repo_id, rev)
        out = []
        while sha:
            rec = self._commit(d, sha)
            out.append({"id": sha, "title": rec["title"], "message": rec["message"], "date": rec["date"],
                        "authors": [{"user": u, "avatar": None} for u in rec["authors"]]})
            sha = rec["parent"]
        return out

    def file(self, kind: str, repo_id: str, rev: str, path: str) -> tuple[str, str, int]:
        """(commit sha, blob sha, size) of file `path` at `rev`; 404 EntryNotFound (with the commit) else."""
        _, sha, tree = self._snapshot(kind, repo_id, rev)
        if path not in tree:
            raise HubError(404, f"Entry not found: {path} at {rev}", "EntryNotFound", headers={"X-Repo-Commit": sha})
        blob, size = tree[path]
        return sha, blob, size

    # -- writing --------------------------------------------------------------------------------------------

    def preupload(self, kind: str, repo_id: str, rev: str, files: list[dict]) -> list[dict]:
        """Every file "regular" and not ignored, with the oid it has at `rev` (None when new)."""
        _, _, tree = self._snapshot(kind, repo_id, rev)
        return [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                 "oid": tree[f["path"]][0] if f["path"] in tree else None} for f in files]

    def commit(self, kind: str, repo_id: str, branch: str, body: bytes) -> str:
        """Apply an NDJSON commit to `branch`; returns the new commit's sha. 412 when the header's
        `parentCommit` is not the branch head, 404 EntryNotFound for a deletion of nothing, 400 for LFS
        entries (never asked for), bad paths and a path that would be both a file and a folder."""
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "a commit starts with its header line")
        header = lines[0]["value"]
        with self.lock:
            d, refs = self._refs(kind, repo_id)
            if branch not in refs["branches"]:
                self._resolve(d, refs, branch)  # 404 when it names nothing
                raise HubError(400, f"Invalid rev id: {branch} is not a branch (commits go to a branch)")
            head = refs["branches"][branch]
            if header.get("parentCommit") and header["parentCommit"] != head:
                raise HubError(412, "A commit has happened since. Please refresh and try again.")
            tree = dict(self._commit(d, head)["tree"])
            for line in lines[1:]:
                self._apply(tree, line.get("key"), line.get("value") or {})
            clash = _folders(tree) & set(tree)
            if clash:
                raise HubError(400, f"a path cannot be both a file and a folder: {sorted(clash)[0]}")
            sha = self._new_commit(d, head, tree, header.get("summary") or "", header.get("description") or "")
            refs["branches"][branch] = sha
            _write_json(d / "refs.json", refs)
            return sha

    def _apply(self, tree: dict, key: str | None, value: dict) -> None:
        if key == "file":
            path = _check_path(value.get("path", ""))
            content = value.get("content", "")
            data = base64.b64decode(content) if value.get("encoding") == "base64" else content.encode()
            tree[path] = [self.put_blob(data), len(data)]
        elif key == "deletedFile":
            path = _check_path(value.get("path", ""))
            if path not in tree:
                raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
            del tree[path]
        elif key == "deletedFolder":
            prefix = _check_path(value.get("path", "").rstrip("/")) + "/"
            gone = [p for p in tree if p.startswith(prefix)]
            if not gone:
                raise HubError(404, f"A folder with this name doesn't exist: {prefix}", "EntryNotFound")
            for p in gone:
                del tree[p]
        elif key == "lfsFile":
            raise HubError(400, "LFS files are not accepted: this server answers uploadMode 'regular'")
        else:
            raise HubError(400, f"unknown commit operation {key!r}")


KINDS = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def split_revision(segments: list[str]) -> tuple[str, list[str]]:
    """`["main", "a", "b.txt"]` -> `("main", ["a", "b.txt"])`; `refs/convert/x` and `refs/pr/N` arrive
    unencoded from some clients and count as one revision."""
    if not segments or not segments[0]:
        raise HubError(400, "a revision is required")
    if segments[0] == "refs" and len(segments) >= 3 and segments[1] in ("convert", "pr"):
        return "/".join(segments[:3]), segments[3:]
    return unquote(segments[0]), segments[1:]


def path_of(segments: list[str]) -> str:
    """The repo path of the remaining URL segments (each may be percent-encoded, slashes included)."""
    return unquote("/".join(segments)).strip("/")


class HubHandler(BaseHTTPRequestHandler):
    """One request against `self.server.hub` (a `HubServer`)."""

    protocol_version = "HTTP/1.1"  # keep-alive, as httpx expects; every answer has a Content-Length
    # Headers and body go out in two writes: with Nagle's algorithm on, the body waits for the client's
    # delayed ACK of the headers (~40 ms a request), which would be all a benchmark of reads measured.
    disable_nagle_algorithm = True
    server: "_Server"

    def log_message(self, *args: Any) -> None:
        pass

    # -- plumbing -------------------------------------------------------------------------------------------

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
              content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), headers)

    def _dispatch(self) -> None:
        hub = self.server.hub
        hub.record(self.command, self.path, self.headers.get("Range"))
        body = self._body()
        try:
            hub.route(self, body)
        except (BrokenPipeError, ConnectionResetError):  # the client went away mid-answer (a closed stream)
            self.close_connection = True
        except json.JSONDecodeError as e:
            self._json(400, {"error": f"malformed JSON body: {e}"})
        except HubError as e:
            headers = {"X-Error-Message": e.message, **e.headers}
            if e.code:
                headers["X-Error-Code"] = e.code
            self._json(e.status, {"error": e.message, **e.extra}, headers)
        except Exception:  # a bug of this server: answer 500 and keep it for the fixture to report
            hub.errors.append(f"{self.command} {self.path}\n{traceback.format_exc()}")
            self._json(500, {"error": "test hub server error (see HubServer.errors)"})

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _dispatch


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    hub: "HubServer"


class HubServer:
    """The Hub double: repos under `root`, served on 127.0.0.1 (port chosen by the OS) once `start()`ed.

    page_size: entries per `tree` page (the Hub's is 1000; 50 with `expand`, capped by this too); a small one
    makes the client follow `Link` pagination. user: the account that `whoami` names and that `create_repo`
    without a namespace uses. `log` holds `(method, decoded path with query, Range header)` of every request;
    `errors` the tracebacks of requests this server failed on (each answered 500).
    """

    def __init__(self, root: str | Path, *, page_size: int = 1000, user: str = "test-user") -> None:
        self.repos = RepoStore(Path(root), user=user)
        self.page_size, self.user = page_size, user
        self.log: list[tuple[str, str, str | None]] = []
        self.errors: list[str] = []
        self._log_lock = threading.Lock()
        self._httpd: _Server | None = None
        self.endpoint = ""

    def start(self) -> "HubServer":
        self._httpd = _Server(("127.0.0.1", 0), HubHandler)
        self._httpd.hub = self
        self.endpoint = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        threading.Thread(target=self._httpd.serve_forever, daemon=True, name="hub-server").start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def record(self, method: str, path: str, rng: str | None) -> None:
        with self._log_lock:
            self.log.append((method, unquote(path), rng))

    def requests(self, method: str, contains: str) -> list[tuple[str, str, str | None]]:
        """The logged requests with this method whose decoded path (query included) contains `contains`."""
        with self._log_lock:
            return [r for r in self.log if r[0] == method and contains in r[1]]

    def client_env(self, home: str | Path) -> dict[str, str]:
        """Environment for a subprocess that uses `huggingface_hub` against this server (HF_HOME under `home`)."""
        return {"HF_ENDPOINT": self.endpoint, "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_TELEMETRY": "1",
                "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_HOME": str(Path(home) / "hf_home")}

    def repo_url(self, kind: str, repo_id: str) -> str:
        return f"{self.endpoint}/{URL_PREFIX[kind]}{repo_id}"

    # -- routing ----------------------------------------------------------------------------------------------

    def route(self, h: HubHandler, body: bytes) -> None:
        url = urlsplit(h.path)
        query = parse_qs(url.query)
        seg = url.path.strip("/").split("/")
        if seg[:1] == ["api"]:
            if seg[1:2] == ["repos"] and len(seg) == 3:
                return self._repos(h, seg[2], body)
            if seg[1:] == ["whoami-v2"] and h.command == "GET":
                return h._json(200, {"type": "user", "name": self.user, "orgs": [], "auth": {}})
            if seg[1:] == ["validate-yaml"] and h.command == "POST":
                return self._validate_yaml(h, body)
            if len(seg) >= 4 and seg[1] in KINDS:
                return self._repo_api(h, KINDS[seg[1]], f"{seg[2]}/{seg[3]}", seg[4:], query, body)
        else:
            kind = "model"
            if seg[0] in ("datasets", "spaces"):
                kind, seg = KINDS[seg[0]], seg[1:]
            if len(seg) >= 4 and seg[2] == "resolve" and h.command in ("GET", "HEAD"):
                return self._resolve(h, kind, f"{seg[0]}/{seg[1]}", seg[3:])
        raise HubError(404, f"no route for {h.command} {url.path}")

    def _repos(self, h: HubHandler, action: str, body: bytes) -> None:
        payload = json.loads(body or b"{}")
        kind = payload.get("type") or "model"
        if kind not in URL_PREFIX:
            raise HubError(400, f"unknown repo type {kind!r}")
        repo_id = f"{payload.get('organization') or self.user}/{payload.get('name', '')}"
        if action == "create" and h.command == "POST":
            url = self.repo_url(kind, repo_id)
            if not self.repos.create(kind, repo_id):
                raise HubError(409, f"You already created this {kind} repo", extra={"url": url})
            return h._json(200, {"url": url, "name": repo_id})
        if action == "delete" and h.command == "DELETE":
            self.repos.delete(kind, repo_id)
            return h._send(200)
        raise HubError(404, f"no route for {h.command} /api/repos/{action}")

    def _validate_yaml(self, h: HubHandler, body: bytes) -> None:
        try:
            card_data(json.loads(body).get("content", ""))
        except ValueError as e:
            return h._json(400, {"errors": [{"message": str(e)}], "warnings": []})
        h._json(200, {"errors": [], "warnings": []})

    def _repo_api(self, h: HubHandler, kind: str, repo_id: str, rest: list[str], query: dict[str, list[str]],
                  body: bytes) -> None:
        op, args, m = (rest[0] if rest else ""), rest[1:], h.command
        flag = lambda name: (query.get(name) or ["false"])[0].lower() in ("1", "true")  # noqa: E731
        if (op, m) == ("", "GET") or (op, m) == ("revision", "GET"):
            rev = split_revision(args)[0] if op else None
            return h._json(200, self.repos.info(kind, repo_id, rev, self.repo_url(kind, repo_id), flag("blobs")))
        if (op, m) == ("refs", "GET"):
            return h._json(200, self.repos.refs(kind, repo_id, flag("include_prs")))
        if op in ("xet-read-token", "xet-write-token"):
            raise HubError(501, "this test server has no Xet storage: it answers uploadMode 'regular'")
        if (op, m) in (("tag", "DELETE"), ("branch", "DELETE")):
            self.repos.delete_ref(kind, repo_id, op, path_of(args))
            return h._send(200)
        rev, rest2 = split_revision(args)
        if (op, m) == ("tree", "GET"):
            return self._tree(h, kind, repo_id, rev, path_of(rest2), flag("recursive"), flag("expand"), query)
        if (op, m) == ("paths-info", "POST"):
            form = parse_qs(body.decode())
            expand = (form.get("expand") or ["false"])[0].lower() in ("1", "true")
            return h._json(200, self.repos.paths_info(kind, repo_id, rev, form.get("paths", []), expand))
        if (op, m) == ("commits", "GET"):
            return h._json(200, self.repos.history(kind, repo_id, rev))
        if (op, m) == ("preupload", "POST"):
            files = json.loads(body).get("files", [])
            return h._json(200, {"files": self.repos.preupload(kind, repo_id, rev, files), "commitOid": None})
        if (op, m) == ("commit", "POST"):
            if flag("create_pr"):
                raise HubError(400, "this test server does not open pull requests")
            sha = self.repos.commit(kind, repo_id, rev, body)
            return h._json(200, {"success": True, "commitOid": sha, "hookOutput": "",
                                 "commitUrl": f"{self.repo_url(kind, repo_id)}/commit/{sha}"})
        if (op, m) in (("tag", "POST"), ("branch", "POST")):
            payload = json.loads(body or b"{}")
            if op == "tag":
                self.repos.create_ref(kind, repo_id, "tag", payload.get("tag", ""), rev)
            else:
                self.repos.create_ref(kind, repo_id, "branch", rev, payload.get("startingPoint") or "main")
            return h._json(200, {})
        raise HubError(404, f"no route for {m} /api/{kind}s/{repo_id}/{'/'.join(rest)}")

    def _tree(self, h: HubHandler, kind: str, repo_id: str, rev: str, path: str, recursive: bool, expand: bool,
              query: dict[str, list[str]]) -> None:
        entries = self.repos.tree(kind, repo_id, rev, path, recursive, expand)
        size = min(self.page_size, 50) if expand else self.page_size
        cursor = (query.get("cursor") or ["0"])[0]
        if not cursor.isdigit():
            raise HubError(400, f"invalid cursor {cursor!r}")
        start = int(cursor)
        page, headers = entries[start:start + size], {}
        if start + size < len(entries):
            encoded = ("/" + quote(path, safe="")) if path else ""
            nxt = (f"{self.endpoint}/api/{kind}s/{repo_id}/tree/{quote(rev, safe='')}{encoded}"
                   f"?recursive={str(recursive).lower()}&expand={str(expand).lower()}&cursor={start + size}")
            headers["Link"] = f'<{nxt}>; rel="next"'
        h._json(200, page, headers)

    def _resolve(self, h: HubHandler, kind: str, repo_id: str, segments: list[str]) -> None:
        rev, rest = split_revision(segments)
        sha, blob, size = self.repos.file(kind, repo_id, rev, path_of(rest))
        headers = {"X-Repo-Commit": sha, "ETag": f'"{blob}"', "Accept-Ranges": "bytes"}
        start, end = 0, size - 1
        rng = h.headers.get("Range")
        if rng:
            span = parse_range(rng, size)
            if span is None:
                raise HubError(416, "range not satisfiable", headers={"Content-Range": f"bytes */{size}", **headers})
            start, end = span
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        data = b"" if h.command == "HEAD" else self.repos.read_blob(blob, start, end - start + 1)
        h.send_response(206 if rng else 200)
        h.send_header("Content-Type", "application/octet-stream")
        h.send_header("Content-Length", str(end - start + 1))
        for k, v in headers.items():
            h.send_header(k, v)
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(data)


@contextlib.contextmanager
def loopback_client() -> Iterator[None]:
    """Let this process's `huggingface_hub` client reach 127.0.0.1 while it stays offline for every other host
    (see the module docstring); the library's own client settings come back on exit."""
    import httpx2
    from huggingface_hub import get_session, set_client_factory

    own = get_session()  # the library's client, as its default factory builds it
    hooks = {k: list(v) for k, v in own.event_hooks.items()}
    options = {"follow_redirects": own.follow_redirects, "timeout": own.timeout}

    def guard(request: Any) -> None:
        if request.url.host not in LOOPBACK:
            for hook in hooks.get("request", []):
                hook(request)

    set_client_factory(lambda: httpx2.Client(event_hooks={**hooks, "request": [guard]}, **options))
    try:
        yield
    finally:
        set_client_factory(lambda: httpx2.Client(event_hooks=hooks, **options))


@contextlib.contextmanager
def running_hub(root: str | Path | None = None, *, page_size: int = 1000,
                client: bool = True) -> Iterator[HubServer]:
    """A started `HubServer` over `root` (a temp folder when None), with `loopback_client()` when `client`.
    On exit the server stops; a request it failed on (a bug of the double) fails the caller."""
    with contextlib.ExitStack() as stack:
        if root is None:
            root = stack.enter_context(tempfile.TemporaryDirectory(prefix="hub-"))
        server = HubServer(root, page_size=page_size).start()
        stack.callback(server.stop)
        if client:
            stack.enter_context(loopback_client())
        yield server
        assert not server.errors, "the test hub server failed:\n" + "\n".join(server.errors)
