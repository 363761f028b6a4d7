"""shardyard: raw robot-learning and vision datasets into sharded, cached stores, and loaders over them."""

__version__ = "0.1.0"


def open_store(path_or_url: str):
    """Open a complete store (local path or fsspec URL) for reading; see `shardyard.stores.episodic`.

    Raises `StoreError` when the directory has no `manifest.json` (absent, or a job that never finished).
    """
    from shardyard.stores.episodic import EpisodicStore

    return EpisodicStore(path_or_url)


__all__ = ["open_store", "__version__"]
