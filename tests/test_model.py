import pytest
import torch

from audiovit.model import ModelConfig, ViT, standardize


def small(**kw) -> ModelConfig:
    base = dict(n_classes=5, n_mels=32, n_frames=48, width=64, n_layers=2, n_heads=4, stem="patch")
    return ModelConfig(**{**base, **kw})


@pytest.mark.parametrize("pool", ["cls", "mean"])
@pytest.mark.parametrize("stride", [16, 10])
def test_shapes_and_every_parameter_gets_a_gradient(pool, stride):
    model = ViT(small(pool=pool, patch_stride=stride))
    x = torch.randn(3, 32, 48) * 20 - 50
    logits = model(x)
    assert logits.shape == (3, 5)
    logits.square().sum().backward()
    no_grad = [
        n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0
    ]
    assert no_grad == []
    fp, tp = model.cfg.grid()
    assert model.pos_embed.shape == (1, 1 + fp * tp, 64)


def test_conv_stem_gives_one_token_per_16x16_cell_and_scores_windows_independently():
    model = ViT(small(stem="conv", n_frames=64))
    assert model.cfg.grid() == (2, 4) and model.pos_embed.shape == (1, 1 + 8, 64)
    assert "patch_embed.backbone.0.conv.weight" in model.state_dict()  # timm's HybridEmbed names
    x = torch.randn(4, 32, 64) * 20 - 50
    model(x).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    model.eval()  # BatchNorm on its running statistics: a window scores the same in any batch
    with torch.no_grad():
        torch.testing.assert_close(model(x[:1]), model(x)[:1], atol=1e-5, rtol=1e-4)
        assert torch.isfinite(model(torch.randn(2, 32, 100))).all()  # other lengths
    with pytest.raises(ValueError, match="stem"):
        ViT(small(stem="resnet"))


@pytest.mark.parametrize("stride, grid", [(8, (4, 8)), (4, (8, 16))])
def test_conv_stem_patch_stride_gives_finer_cells(stride, grid):
    model = ViT(small(stem="conv", n_frames=64, patch_stride=stride))
    assert model.cfg.grid() == grid and model.pos_embed.shape == (1, 1 + grid[0] * grid[1], 64)
    strides = [layer.conv.stride for layer in model.patch_embed.backbone]
    assert strides.count((2, 2)) == {8: 3, 4: 2}[stride] and strides[0] == (2, 2)
    tokens, got = model.patch_embed(torch.randn(2, 32, 64))
    assert got == grid and tokens.shape == (2, grid[0] * grid[1], 64)
    assert model(torch.randn(2, 32, 100)).shape == (2, 5)  # other lengths
    with pytest.raises(ValueError, match="patch_stride"):
        ViT(small(stem="conv", patch_stride=10))


def test_inference_attention_equals_the_training_kernel():
    model = ViT(small()).eval()
    x = torch.randn(3, 32, 48) * 20 - 50
    with torch.no_grad():
        plain = model(x)  # the CPU inference path: softmax(QKᵀ)V
    torch.testing.assert_close(model(x).detach(), plain, atol=1e-5, rtol=1e-4)  # SDPA


def test_presets_have_the_published_sizes():
    n = lambda preset: sum(
        p.numel()
        for p in ViT(
            ModelConfig.from_preset(preset, n_classes=10, n_mels=128, n_frames=301, stem="patch")
        ).parameters()
    )
    assert 5.0e6 < n("tiny") < 6.0e6 and 21e6 < n("small") < 22.5e6
    with pytest.raises(ValueError, match="unknown preset"):
        ModelConfig.from_preset("huge", n_classes=2, n_mels=64, n_frames=64)


def test_other_input_lengths_resample_the_position_embedding():
    model = ViT(small()).eval()
    for T in (16, 48, 100):
        assert torch.isfinite(model(torch.randn(2, 32, T))).all()
    with pytest.raises(AssertionError, match="mel bins"):
        model(torch.randn(1, 31, 48))


def test_silence_and_constant_input_give_finite_logits():
    model = ViT(small()).eval()
    x = torch.stack([torch.full((32, 48), -100.0), torch.zeros(32, 48), torch.full((32, 48), 1e4)])
    assert torch.isfinite(model(x)).all()
    s = standardize(x, 80.0)
    assert torch.isfinite(s).all() and s.abs().max() == 0


def test_per_band_norm_cancels_a_fixed_channel_colouring():
    cfg = dict(width=32, n_layers=2, n_heads=2, n_classes=3, n_mels=16, n_frames=32, stem="patch")
    x = torch.randn(2, 16, 32) * 5 - 40
    colour = torch.linspace(-12, 12, 16)[None, :, None]  # a microphone's tilt, dB per band
    torch.manual_seed(0)
    band = ViT(ModelConfig(**cfg, norm="band")).eval()
    torch.manual_seed(0)
    example = ViT(ModelConfig(**cfg)).eval()
    with torch.no_grad():
        assert torch.allclose(band(x), band(x + colour), atol=1e-4)
        assert not torch.allclose(example(x), example(x + colour), atol=1e-2)
    with pytest.raises(ValueError, match="norm"):
        ViT(ModelConfig(**cfg, norm="batch"))


def test_example_scores_do_not_depend_on_the_batch():
    model = ViT(small()).eval()
    x = torch.randn(4, 32, 48) * 10
    torch.testing.assert_close(model(x)[1:2], model(x[1:2]), atol=1e-5, rtol=1e-5)
