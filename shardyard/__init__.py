"""shardyard: raw robot-learning and vision datasets into sharded, cached stores, and loaders over them."""

from shardyard.version import __version__


def open_store(path_or_url: str, verify_reads: bool = True):
    """Open a complete store (local path or fsspec URL) by its manifest's format; see
    `shardyard.stores.open_store` (`verify_reads`: check reads against the recorded checksums). Raises
    `StoreError` when there is no `manifest.json`."""
    from shardyard.stores import open_store as _open

    return _open(path_or_url, verify_reads=verify_reads)


__all__ = ["open_store", "__version__"]
