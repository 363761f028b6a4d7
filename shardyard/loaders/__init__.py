"""Loaders over shardyard stores (PyTorch datasets)."""


def __getattr__(name: str):
    # `shardyard.loaders.TokenDataset` without importing torch on `import shardyard.loaders`
    if name in ("TokenDataset", "TokenDatasetConfig"):
        from shardyard.loaders import tokens

        return getattr(tokens, name)
    raise AttributeError(f"module 'shardyard.loaders' has no attribute {name!r}")
