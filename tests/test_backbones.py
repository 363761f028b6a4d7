"""Backbone specs through the real code paths: tiny random transformers Dinov2, a local HF folder, a
torch.hub-style local repo built here, and the no-weights error."""

from __future__ import annotations

import hashlib
import textwrap

import pytest
import torch

from shardyard.errors import ConfigError
from shardyard.models.backbones import IMAGENET_MEAN, IMAGENET_STD, TINY_RANDOM, BackboneConfig, load_backbone


@pytest.fixture(scope="module")
def tiny():
    return load_backbone(BackboneConfig(spec=TINY_RANDOM, image_size=(160, 120), device="cpu"))


def test_tiny_random_shapes_and_determinism(tiny):
    x = torch.rand(3, 3, 48, 64, generator=torch.Generator().manual_seed(1))
    out = tiny(x)
    # 120x160 rounded down to multiples of 14 -> 112x154 -> grid 8x11
    assert tiny.input_hw == (112, 154) and out.grid == (8, 11)
    assert out.patch_tokens.shape == (3, 88, 32) and out.cls_token.shape == (3, 32)
    assert out.patch_tokens.dtype == torch.float32 and torch.isfinite(out.patch_tokens).all()
    again = load_backbone(BackboneConfig(spec=TINY_RANDOM, image_size=(160, 120), device="cpu"))
    assert again.weights_sha256 == tiny.weights_sha256
    assert torch.equal(again(x).patch_tokens, out.patch_tokens)
    other_seed = load_backbone(BackboneConfig(spec=TINY_RANDOM, seed=1, device="cpu"))
    assert other_seed.weights_sha256 != tiny.weights_sha256


def test_preprocessing_is_applied_once(tiny):
    x = torch.rand(2, 3, 112, 154, generator=torch.Generator().manual_seed(2))  # already the input size
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    ref = tiny.model(pixel_values=(x - mean) / std).last_hidden_state
    out = tiny(x)
    torch.testing.assert_close(out.patch_tokens, ref[:, 1:], rtol=0, atol=0)
    torch.testing.assert_close(out.cls_token, ref[:, 0], rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        tiny(torch.rand(2, 1, 8, 8))


def test_layers_concatenate_along_channels(tiny):
    two = load_backbone(BackboneConfig(spec=TINY_RANDOM, layers=(0, -1), image_size=(160, 120), device="cpu"))
    x = torch.rand(2, 3, 48, 64, generator=torch.Generator().manual_seed(3))
    out, last = two(x), tiny(x)
    assert two.embed_dim == 64 and out.patch_tokens.shape == (2, 88, 64)
    torch.testing.assert_close(out.patch_tokens[..., 32:], last.patch_tokens)  # last block, normed
    assert not torch.allclose(out.patch_tokens[..., :32], last.patch_tokens)
    with pytest.raises(ConfigError, match="out of range"):
        load_backbone(BackboneConfig(spec=TINY_RANDOM, layers=(5,)))


def test_local_hf_folder_loads_through_automodel(tiny, tmp_path):
    folder = tmp_path / "dinov2-tiny"
    tiny.model.save_pretrained(folder)
    bb = load_backbone(BackboneConfig(spec=str(folder), image_size=(160, 120), device="cpu"))
    assert bb.kind == "transformers" and bb.patch_size == 14 and bb.hidden == 32
    x = torch.rand(2, 3, 48, 64, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(bb(x).patch_tokens, tiny(x).patch_tokens)
    weights = sorted(folder.glob("*.safetensors"))
    assert weights and bb.weights_sha256 == hashlib.sha256(weights[0].read_bytes()).hexdigest()


def test_missing_hf_weights_say_how_to_get_them(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_hf_home"))
    with pytest.raises(ConfigError) as e:
        load_backbone("facebook/dinov2-small")
    msg = str(e.value)
    assert "no local weights" in msg and "huggingface-cli download facebook/dinov2-small" in msg
    assert "--hub-repo" in msg and "tiny-random-dinov2" in msg


HUBCONF = textwrap.dedent('''
    import torch
    from torch import nn

    dependencies = ["torch"]


    class TinyViT(nn.Module):
        """A hub-style ViT with DINOv2/v3's interface: forward_features, get_intermediate_layers."""

        def __init__(self, embed_dim=24, depth=3, patch_size=16):
            super().__init__()
            self.patch_size, self.embed_dim, self.n_blocks = patch_size, embed_dim, depth
            self.patch_embed = nn.Conv2d(3, embed_dim, patch_size, patch_size)
            self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
            self.blocks = nn.ModuleList(
                nn.TransformerEncoderLayer(embed_dim, 2, 48, batch_first=True, dropout=0.0) for _ in range(depth))
            self.norm = nn.LayerNorm(embed_dim)

        def _tokens(self, x):
            t = self.patch_embed(x).flatten(2).transpose(1, 2)
            return torch.cat([self.cls_token.expand(len(t), -1, -1), t], dim=1)

        def forward_features(self, x):
            t = self._tokens(x)
            for b in self.blocks:
                t = b(t)
            t = self.norm(t)
            return {"x_norm_clstoken": t[:, 0], "x_norm_patchtokens": t[:, 1:]}

        def get_intermediate_layers(self, x, n, reshape=False, return_class_token=True, norm=True):
            t, outs = self._tokens(x), []
            for i, b in enumerate(self.blocks):
                t = b(t)
                if i in n:
                    o = self.norm(t) if norm else t
                    outs.append((o[:, 1:], o[:, 0]))
            return tuple(outs)


    def dinov3_tinys16(pretrained=True, weights=None, **kw):
        return TinyViT(**kw)


    def other_entry(pretrained=True, **kw):
        return TinyViT(embed_dim=8)
''')


def test_hub_style_local_repo_with_weights_file(tmp_path):
    repo = tmp_path / "dinov3"
    repo.mkdir()
    (repo / "hubconf.py").write_text(HUBCONF)
    torch.manual_seed(0)
    model = torch.hub.load(str(repo), "dinov3_tinys16", source="local", trust_repo=True)
    weights = tmp_path / "dinov3_tinys16_pretrain_test-0000.pth"
    torch.save(model.state_dict(), weights)

    bb = load_backbone(BackboneConfig(spec="hub", hub_repo=str(repo), weights=str(weights),
                                      image_size=(64, 48), device="cpu"))
    assert bb.kind == "hub" and bb.config.spec == "dinov3_tinys16"  # entry inferred from the file name
    assert bb.grid == (3, 4) and bb.embed_dim == 24
    assert bb.weights_sha256 == hashlib.sha256(weights.read_bytes()).hexdigest()
    x = torch.rand(2, 3, 48, 64, generator=torch.Generator().manual_seed(5))
    out = bb(x)
    assert out.patch_tokens.shape == (2, 12, 24) and out.cls_token.shape == (2, 24)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.inference_mode():
        ref = model.eval().forward_features((x - mean) / std)
    torch.testing.assert_close(out.patch_tokens, ref["x_norm_patchtokens"])

    two = load_backbone(BackboneConfig(spec="dinov3_tinys16", hub_repo=str(repo), weights=str(weights),
                                       layers=(1, 2), image_size=(64, 48), device="cpu"))
    assert two(x).patch_tokens.shape == (2, 12, 48)
    torch.testing.assert_close(two(x).patch_tokens[..., 24:], out.patch_tokens)

    with pytest.raises(ConfigError, match="do not fit"):
        load_backbone(BackboneConfig(spec="other_entry", hub_repo=str(repo), weights=str(weights)))
    with pytest.raises(ConfigError, match="no hubconf.py"):
        load_backbone(BackboneConfig(spec="hub", hub_repo=str(tmp_path), weights=str(weights)))
