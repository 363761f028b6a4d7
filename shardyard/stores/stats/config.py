"""Options of the stats pass (`StatsConfig`), apart from `stats/__init__.py` so that the per-kind extras
(`stats/depth.py`) can take them without importing the package that imports them."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["StatsConfig"]


@dataclass
class StatsConfig:
    """Options of `compute_stats`. Bin counts and the PCA threshold follow seed 001's defaults
    (`N_HEIGHT_BINS = N_GRIPPER_BINS = N_ROT_BINS = 32`, PC1 >= 80 % -> "1d_pca"); `hist_bins` is the
    number of equal bins of `moments.make_edges` (the loaders' own histograms); `compute_stats` does not use
    it: its float fields take the data-independent buckets of `stats.parts`.
    `rotation_separation`: PC1 projections whose two-group split (`robot.pc1_separation`) reaches this are
    taken as two groups of orientations, and the recommended rotation mode is then "kmeans".

    Raises `ValueError` when a count or stride is below 1.
    """

    height_bins: int = 32
    height_margin: float = 0.05
    gripper_bins: int = 32
    rotation_bins: int = 32
    kmeans_clusters: int = 32
    pca_threshold: float = 0.8
    rotation_separation: float = 0.9
    image_frame_stride: int = 10
    image_pixel_stride: int = 4
    seed: int = 0
    hist_bins: int = 2048

    def __post_init__(self) -> None:
        """Check the counts and strides."""
        for name in ("height_bins", "gripper_bins", "rotation_bins", "kmeans_clusters", "image_frame_stride",
                     "image_pixel_stride", "hist_bins"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"StatsConfig.{name} must be >= 1, got {getattr(self, name)}")
