"""`stores.frames.planes.to_planes`: channels-last frames as contiguous channels-first planes, the same values."""

import numpy as np
import pytest

from shardyard.stores.frames.planes import to_planes


@pytest.mark.parametrize("shape,dtype", [((5, 48, 64, 3), np.uint8), ((2, 7, 340, 3), np.uint8),
                                         ((3, 16, 20, 1), np.uint8), ((2, 9, 11, 4), np.uint8),
                                         ((2, 6, 8, 3), np.float32), ((0, 4, 4, 3), np.uint8)])
def test_planes_equal_the_transposed_frames(shape, dtype):
    rng = np.random.default_rng(0)
    frames = (rng.random(shape) * 255).astype(dtype)
    planes = to_planes(frames)
    assert planes.shape == (shape[0], shape[3], shape[1], shape[2]) and planes.dtype == dtype
    assert planes.flags.c_contiguous
    np.testing.assert_array_equal(planes, frames.transpose(0, 3, 1, 2))


def test_planes_written_into_out_and_from_strided_frames():
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (4, 30, 40, 3), dtype=np.uint8)
    out = np.zeros((2, 3, 30, 40), np.uint8)
    assert to_planes(frames[::2], out) is out  # a strided view of every second frame
    np.testing.assert_array_equal(out, frames[::2].transpose(0, 3, 1, 2))
    view = np.zeros((4, 3, 30, 40), np.uint8)
    to_planes(frames[1:3], view[1:3])  # into part of a batch, as a DataLoader batch is filled
    np.testing.assert_array_equal(view[1:3], frames[1:3].transpose(0, 3, 1, 2))
    assert not view[0].any() and not view[3].any()


@pytest.mark.parametrize("out", [np.zeros((2, 3, 30, 41), np.uint8), np.zeros((2, 3, 30, 40), np.int16),
                                 np.zeros((2, 30, 40, 3), np.uint8).transpose(0, 3, 1, 2)])
def test_planes_refuse_a_wrong_out(out):
    frames = np.zeros((2, 30, 40, 3), np.uint8)
    with pytest.raises(ValueError, match="out must be"):
        to_planes(frames, out)
    with pytest.raises(ValueError, match="N, H, W, C"):
        to_planes(frames[0])
