"""Flat trainers, one per file, on the shared machinery of `train/loop.py`."""
