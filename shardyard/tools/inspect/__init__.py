"""`shardyard inspect`: a plain-text summary and diagnostic plots of a store (`summary`, `depth`, `tokens`),
of a foveated-captioning run (`foveated`), drawn with matplotlib's object API (`plotting`)."""

__all__: list[str] = []
