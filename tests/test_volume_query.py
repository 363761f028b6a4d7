"""DinoVolumeQuery: the factorised volume CE equals the materialised one; shapes; images vs cached tokens."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from vq_fixtures import TINY_MODEL

from shardyard.models.volume_query import (
    DinoVolumeQuery,
    VolumeQueryConfig,
    decode,
    sinusoidal_features,
    volume_ce,
    volume_query_loss,
)


def _tiny(**kw) -> VolumeQueryConfig:
    return VolumeQueryConfig(**{"embed_dim": 32, "grid": (4, 4), "pred_size": 8, "window": 3,
                                "n_height_bins": 5, "n_gripper_bins": 4, "n_rot_bins": 6, **TINY_MODEL, **kw})


def _batch(cfg: VolumeQueryConfig, b: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    t, p = cfg.window, cfg.pred_size
    return {"patch_tokens": torch.randn(b, cfg.grid[0] * cfg.grid[1], cfg.embed_dim, generator=g),
            "cls_token": torch.randn(b, cfg.embed_dim, generator=g),
            "start_pix": torch.randint(0, p, (b, 2), generator=g),
            "pix": torch.randint(0, p, (b, t, 2), generator=g),
            "height_bin": torch.randint(0, cfg.n_height_bins, (b, t), generator=g),
            "gripper_bin": torch.randint(0, cfg.n_gripper_bins, (b, t), generator=g),
            "rot_bin": torch.randint(0, cfg.n_rot_bins, (b, t), generator=g),
            "mask": torch.tensor([[True, True, False], [True, False, False]])[:b]}


def test_factorised_loss_equals_materialised_volume():
    cfg = _tiny()
    torch.manual_seed(0)
    model = DinoVolumeQuery(cfg)
    # non-zero gates and heads, so the blocks and every factor matter
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.3)
    batch = _batch(cfg)
    out = model(batch["start_pix"], batch["patch_tokens"], batch["cls_token"])
    b, t, p, z = 2, cfg.window, cfg.pred_size, cfg.n_height_bins
    # materialise logit(b, t, z, y, x) = q_F . F[y, x] + q_z . sin(z) + q_t . sin(t) from the model's parts
    feat = out["feat"]                                                         # (B, C, P, P)
    vol = (out["pix_logits"].view(b, t, 1, p, p) + out["z_logits"].view(b, t, z, 1, 1)
           + out["t_logit"].view(b, t, 1, 1, 1))                              # (B, T, Z, P, P)
    voxel = batch["height_bin"] * p * p + batch["pix"][..., 1] * p + batch["pix"][..., 0]           # (B, T)
    direct = F.cross_entropy(vol.reshape(b * t, -1), voxel.reshape(-1), reduction="none").view(b, t)
    fact = volume_ce(out["pix_logits"], out["z_logits"], batch["pix"][..., 1] * p + batch["pix"][..., 0],
                     batch["height_bin"])
    torch.testing.assert_close(fact, direct, rtol=1e-5, atol=1e-5)
    assert direct.abs().max() > 1.0                                            # not a trivial case
    assert feat.shape == (b, cfg.d_feat, p, p)
    losses = volume_query_loss(out, batch, cfg)
    m = batch["mask"]
    torch.testing.assert_close(losses["volume"], direct[m].mean())
    grip = F.cross_entropy(out["grip_logits"][m], batch["gripper_bin"][m])
    rot = F.cross_entropy(out["rot_logits"][m], batch["rot_bin"][m])
    torch.testing.assert_close(losses["loss"], direct[m].mean() + 0.5 * grip + 0.5 * rot)


def test_seed_defaults_and_shapes():
    cfg = VolumeQueryConfig()
    assert (cfg.d_feat, cfg.d_sin_z, cfg.d_sin_t, cfg.d_cond, cfg.n_blocks, cfg.pred_size) == (48, 24, 24, 96, 5, 56)
    assert (cfg.n_height_bins, cfg.n_gripper_bins, cfg.n_rot_bins, cfg.d_model) == (32, 32, 32, 96)
    small = _tiny()
    model = DinoVolumeQuery(small)
    batch = _batch(small)
    out = model(batch["start_pix"], batch["patch_tokens"], batch["cls_token"])
    assert out["pix_logits"].shape == (2, 3, 64) and out["z_logits"].shape == (2, 3, 5)
    assert out["grip_logits"].shape == (2, 3, 4) and out["rot_logits"].shape == (2, 3, 6)
    # AdaLN-Zero: the blocks start as the identity, so every future step gets the same query
    torch.testing.assert_close(out["pix_logits"][:, 0], out["pix_logits"][:, 2])
    dec = decode(out, small)
    flat = out["pix_logits"].argmax(-1)
    torch.testing.assert_close(dec["pix"][..., 1] * 8 + dec["pix"][..., 0], flat)
    s = sinusoidal_features(6, 4)
    torch.testing.assert_close(s[:, 0], torch.sin(torch.arange(6.0)))
    with pytest.raises(ValueError, match="patch tokens"):
        model(batch["start_pix"], batch["patch_tokens"][:, :5], batch["cls_token"])
    with pytest.raises(ValueError, match="no backbone"):
        model(batch["start_pix"], images=torch.rand(2, 3, 56, 56))


def test_images_with_backbone_equal_cached_tokens():
    from shardyard.models.backbones import BackboneConfig, load_backbone

    bb = load_backbone(BackboneConfig(spec="tiny-random-dinov2", image_size=(56, 56), device="cpu"))
    cfg = _tiny(embed_dim=bb.embed_dim, grid=tuple(bb.grid))
    torch.manual_seed(1)
    model = DinoVolumeQuery(cfg, backbone=bb)
    images = torch.rand(2, 3, 48, 64)
    start = torch.tensor([[1, 2], [7, 0]])
    tok = bb(images)
    a = model(start, tok.patch_tokens, tok.cls_token)
    b = model(start, images=images)
    torch.testing.assert_close(a["pix_logits"], b["pix_logits"])
    batch = _batch(cfg) | {"start_pix": start}
    loss = volume_query_loss(b, batch, cfg)["loss"]
    loss.backward()                                          # trains through cloned backbone outputs
    assert model.proj.weight.grad is not None and not any(p.requires_grad for p in bb.model.parameters())
    assert "backbone" not in "".join(model.state_dict())   # the frozen backbone is not saved with the model
