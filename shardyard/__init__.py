"""shardyard: raw robot-learning and vision datasets into sharded, cached stores, and loaders over them."""

from shardyard.version import __version__


def open_store(path_or_url: str):
    """Open a complete store (local path or fsspec URL) by its manifest's format; see
    `shardyard.stores.open_store`. Raises `StoreError` when there is no `manifest.json`."""
    from shardyard.stores import open_store as _open

    return _open(path_or_url)


__all__ = ["open_store", "__version__"]
