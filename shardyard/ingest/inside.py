"""Inputs stay inside their root: the checks every source runs before it opens a file whose name or link it
did not choose itself.

An ingest reads the input folder the user named and nothing else, unless `--follow-links` (`follow_links=True`
in the source configs) says otherwise. Refused by default, each as a named error:

- a file or folder that resolves (symlinks followed, `..` normalised) outside the root (`check_inside`,
  `check_folder`);
- a relative name taken from the input (a LeRobot path template, a recorder's camera role) that is absolute,
  has a drive letter or a `..` part, or holds a path separator where a plain name is expected (`name_problem`,
  `plain_name_problem`);
- an HDF5 object stored in another file: an external link, a soft link leading to one, a virtual dataset
  with a source in another file, or a dataset whose raw data lives in an external file (`hdf5_problem`).
  These are refused whatever they point at: HDF5 resolves their file names against the working directory
  and environment variables too, so where they land cannot be decided from the input alone.

Links that stay inside the root are fine. A source turns a problem about one episode into a `SourceError`
(a report row) and one about the whole input into a `ConfigError`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Mapping

from shardyard.errors import SourceError, UnsafePathError
from shardyard.stores.safe_paths import safe_relative

__all__ = ["FOLLOW_HINT", "check_folder", "check_inside", "hdf5_links_problem", "hdf5_member_problem",
           "hdf5_object_problem", "hdf5_problem", "is_inside", "name_problem", "outside_problem", "plain_name_problem"]

FOLLOW_HINT = "pass --follow-links to read it anyway"


def is_inside(root: str | Path, path: str | Path) -> bool:
    """Whether `path`, with every symlink resolved, is `root` (also resolved) or lies below it."""
    return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(root))


def outside_problem(root: str | Path, path: str | Path) -> str | None:
    """Why `path` may not be read (it resolves outside `root`: a link or a `..` leads there), or None."""
    if is_inside(root, path):
        return None
    return (f"{path} leads outside the input folder {os.path.realpath(root)} (it resolves to "
            f"{os.path.realpath(path)}: a symlink or '..'); {FOLLOW_HINT}")


def check_inside(root: str | Path, path: str | Path, *, follow_links: bool, key: str | None = None,
                 field: str | None = None) -> Path:
    """`path` unchanged when it resolves inside `root` (or `follow_links` is set). Raises `SourceError` naming
    the path, episode `key` and `field` when it resolves outside."""
    why = None if follow_links else outside_problem(root, path)
    if why is not None:
        raise SourceError(why, path=str(path), key=key, field=field)
    return Path(path)


def check_folder(root: str | Path, folder: str | Path, *, follow_links: bool, key: str | None = None,
                 subfolders: Iterable[str] = ()) -> None:
    """Check an episode folder before any of its files is read: the folder itself, each entry in it, and each
    entry of the named `subfolders` (e.g. `frames`) must resolve inside `root`. Raises `SourceError` naming
    the first entry that does not (nothing is raised with `follow_links`)."""
    if follow_links:
        return
    check_inside(root, folder, follow_links=False, key=key)
    if not os.path.isdir(folder):
        return
    wanted = set(subfolders)
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        # the folder resolved inside the root, so only a symlink among its entries can lead out of it
        if entry.is_symlink():
            check_inside(root, entry.path, follow_links=False, key=key)
        if entry.name in wanted and entry.is_dir():
            check_folder(root, entry.path, follow_links=False, key=key)


def _unsafe(name: Any) -> str | None:
    try:
        safe_relative(name)
    except UnsafePathError as e:
        return e.reason
    return None


def name_problem(name: Any) -> str | None:
    """Why a relative path read from the input (a path template) may not be joined onto its root: not text,
    absolute, a drive letter, a `..` part, a backslash or a NUL (`stores.safe_paths.safe_relative`); None when
    it may."""
    why = _unsafe(name)
    return None if why is None else f"{why} (a path read from the input must stay inside its folder)"


def plain_name_problem(name: Any) -> str | None:
    """Why `name`, read from the input to become part of a file name, is not a plain name (`name_problem`'s
    refusals, a `/`, or `.`); None when it is."""
    why = _unsafe(name) or (f"unsafe name {name!r}: holds a '/'" if "/" in name else None)
    return None if why is None else f"{why} (it becomes part of a file name in the episode folder)"


def _link_problem(group, name: str, link) -> str | None:
    import h5py

    if isinstance(link, h5py.ExternalLink):
        return f"{group.name.rstrip('/')}/{name} is an HDF5 external link to {link.filename}:{link.path}; {FOLLOW_HINT}"
    return None


def hdf5_member_problem(parent, name: str) -> str | None:
    """Why member `name` of h5py Group `parent` may not be opened: it is an external link (found without
    following it), or an object stored in another file (a soft link leading to an external link); None when
    it is absent or lives in the parent's file."""
    link = parent.get(name, getlink=True)
    why = None if link is None else _link_problem(parent, name, link)
    if why is None:
        obj = parent.get(name)
        if obj is not None and obj.id.fileno != parent.id.fileno:
            why = f"{parent.name.rstrip('/')}/{name} is stored in another file ({obj.file.filename}), reached " \
                  f"through a link; {FOLLOW_HINT}"
    return why


def hdf5_links_problem(group) -> str | None:
    """Why `group` (an h5py Group) may not be read: an external link anywhere below it (found without
    following any); None when there is none."""
    return group.visititems_links(lambda name, link: _link_problem(group, name, link))


def hdf5_problem(group, names: Iterable[str] | Mapping[str, Any] = ()) -> str | None:
    """Why objects of `group` (an h5py Group) may not be read: one of `names` (what the reader will open,
    relative to `group`; or a mapping of those names to the objects already opened) is stored in another
    file (reached through a soft link), is a virtual dataset with a source in another file, or keeps its raw
    data in an external file; None when all of them live in the group's own file. Run `hdf5_links_problem`
    first: opening a name follows its links."""
    fileno = group.id.fileno
    opened = names if isinstance(names, Mapping) else {name: None for name in names}
    for name, obj in opened.items():
        obj = group[name] if obj is None else obj
        why = hdf5_object_problem(obj, fileno, f"{group.name.rstrip('/')}/{name}")
        if why:
            return why
    return None


def hdf5_object_problem(obj, fileno: int, where: str) -> str | None:
    """`hdf5_problem` of one opened h5py object `obj` (named `where` in messages), whose data must live in
    the file numbered `fileno` (`group.id.fileno`): a reader that opens a dataset anyway checks it here,
    without opening it twice."""
    if obj.id.fileno != fileno:
        return f"{where} is stored in another file ({obj.file.filename}), reached through a link; {FOLLOW_HINT}"
    if getattr(obj, "is_virtual", False):
        others = sorted({s.file_name for s in obj.virtual_sources() if s.file_name != "."})
        if others:
            return f"{where} is an HDF5 virtual dataset reading other file(s): {', '.join(others)}; {FOLLOW_HINT}"
    if getattr(obj, "external", None):
        return (f"{where} keeps its data in external file(s): {', '.join(str(e[0]) for e in obj.external)}; "
                f"{FOLLOW_HINT}")
    return None
