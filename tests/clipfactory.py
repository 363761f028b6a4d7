"""Tiny real clips in each container, encoded with PyAV, for the container tests of the video reader, the
WebVid ingest and `ClipStream`.

Every frame differs from its neighbours (a bar that moves one step per frame and a grey band that changes
with the frame number), so a reader that returns a neighbour of the wanted frame is caught. `CLIPS` names
each clip by what it exercises; `encode_clip(name)` returns its bytes and the frames that went in.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import av
import numpy as np

H, W = 48, 64


@dataclass(frozen=True)
class ClipSpec:
    """format: FFmpeg muxer; codec: encoder; ext: the extension that names the container; options: encoder
    options; edit: how packet timestamps are changed before muxing ("" none, "gap": the second half is
    shifted 3 frames later, "repeat": packet 8 gets packet 9's pts, so two frames share one, "lead": every
    pts 3 frames earlier, so an MP4 edit list starts at frame 3 and the demuxer flags the first 3 discard,
    "dts_as_pts": pts := dts from 0, as a muxer that loses B-frames' composition offsets writes them)."""

    format: str
    codec: str
    ext: str
    num_frames: int = 30
    options: dict[str, str] = field(default_factory=dict)
    edit: str = ""


X264_B = {"preset": "fast", "crf": "18", "x264-params": "bframes=3:b-pyramid=normal:keyint=10:min-keyint=10"}
CLIPS = {
    # the case: H.264 with B-frames in AVI, whose demuxer numbers packets in decode order
    "avi_h264_bframes": ClipSpec("avi", "libx264", "avi", 103, X264_B),
    # open GOPs: the I-frames after the first are no IDR, B-frames after them in decode order are shown first
    "avi_h264_open_gop": ClipSpec("avi", "libx264", "avi", 40, {
        "preset": "fast", "crf": "18", "x264-params": "bframes=3:keyint=10:min-keyint=10:open-gop=1:scenecut=0"}),
    "avi_mpeg4_bframes": ClipSpec("avi", "mpeg4", "avi", 30, {"bf": "2", "g": "12", "qscale": "3"}),
    "avi_mpeg4_gap": ClipSpec("avi", "mpeg4", "avi", 24, {"g": "6", "qscale": "3"}, edit="gap"),
    "mkv_h264_bframes": ClipSpec("matroska", "libx264", "mkv", 30, X264_B),
    "mkv_h264_repeated_pts": ClipSpec("matroska", "libx264", "mkv", 24,
                                      {"preset": "fast", "crf": "18", "bf": "0", "g": "6"}, edit="repeat"),
    "webm_vp8": ClipSpec("webm", "libvpx", "webm", 24, {"crf": "10", "b": "1M", "g": "8"}),
    "webm_vp9": ClipSpec("webm", "libvpx-vp9", "webm", 24, {"crf": "20", "b": "0", "g": "8"}),
    "mov_h264_bframes": ClipSpec("mov", "libx264", "mov", 30, X264_B),
    "mp4_h264_bframes": ClipSpec("mp4", "libx264", "mp4", 30, X264_B),
    "mp4_h264_pts_are_dts": ClipSpec("mp4", "libx264", "mp4", 30, X264_B, edit="dts_as_pts"),
    "mp4_edit_list": ClipSpec("mp4", "libx264", "mp4", 20, {"bf": "0", "g": "100"}, edit="lead"),
    # an elementary stream: its packets carry no pts at all
    "h264_raw_no_pts": ClipSpec("h264", "libx264", "h264", 24, X264_B),
}


def clip_frames(n: int, seed: int = 0) -> np.ndarray:
    """`(n, H, W, 3) uint8` source frames, each unlike its neighbours."""
    rng = np.random.default_rng(seed)
    frames = np.repeat(rng.integers(40, 90, (1, H, W, 3)), n, 0).astype(np.uint8)
    for t in range(n):
        frames[t, 12:, (t * 4) % W:(t * 4) % W + 6] = 240
        frames[t, :10] = (t * 9) % 200 + 30
    return frames


def encode_clip(spec: ClipSpec, seed: int = 0, fps: int = 12) -> tuple[bytes, np.ndarray]:
    """Encode `clip_frames(spec.num_frames, seed)` per `spec`; returns (file bytes, the source frames a
    player shows: all but the 3 before the edit list of a "lead" clip)."""
    frames = clip_frames(spec.num_frames, seed)
    buf = io.BytesIO()
    with av.open(buf, mode="w", format=spec.format) as container:
        stream = container.add_stream(spec.codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.options = dict(spec.options)
        packets = []
        for img in frames:
            packets += stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24"))
        packets += stream.encode()
        first_dts = packets[0].dts
        for j, p in enumerate(packets):
            if spec.edit == "dts_as_pts":
                p.dts -= first_dts
                p.pts = p.dts
            if spec.edit == "gap" and j >= len(packets) // 2:
                p.pts, p.dts = p.pts + 3, p.dts + 3
            if spec.edit == "repeat" and j == 8:
                p.pts = packets[9].pts
            if spec.edit == "lead":
                p.pts, p.dts = p.pts - 3, p.dts - 3
            container.mux(p)
    return buf.getvalue(), frames[3:] if spec.edit == "lead" else frames


def reference_frames(data: bytes) -> np.ndarray:
    """The independent decode: every frame PyAV outputs decoding the whole file front to back, in that
    order, as `(N, H, W, 3) uint8` RGB."""
    with av.open(io.BytesIO(data)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
