"""Starts: a run begun from an audiovit model file or an image checkpoint in timm's layout."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from audiovit import checkpoint, data, synth
from audiovit.checkpoint import CheckpointError
from audiovit.model import ModelConfig, ViT
from audiovit.pretrained import load_start, load_timm_weights, read_state_dict, start_settings
from audiovit.train import TrainConfig, build_model, train
from helpers import imagenet_state, run


def small(**kw) -> ModelConfig:
    base = dict(n_classes=5, n_mels=32, n_frames=48, width=64, n_layers=2, n_heads=4, stem="patch")
    return ModelConfig(**{**base, **kw})


def test_timm_weights_leave_the_conv_stem_random():
    donor = ViT(small(n_frames=32))  # a patch-embedding ViT in timm's layout, square grid
    model = ViT(small(stem="conv", n_frames=64))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    missing = load_timm_weights(model, donor.state_dict())
    stem = [k for k in model.state_dict() if k.startswith("patch_embed.")]
    assert set(stem) <= set(missing)  # no half-loaded stem (its proj.bias matches by shape)
    assert all(torch.equal(model.state_dict()[k], before[k]) for k in stem)
    assert torch.equal(model.state_dict()["blocks.0.attn.qkv.weight"],
                       donor.state_dict()["blocks.0.attn.qkv.weight"])  # fmt: skip


@pytest.mark.parametrize("fmt", ["safetensors", "pth", "deit"])
def test_init_from_imagenet_checkpoint(tmp_path, fmt):
    from safetensors.torch import load_file, save_file

    state = imagenet_state(deit=fmt == "deit")
    path = tmp_path / f"vit.{'safetensors' if fmt == 'safetensors' else 'pth'}"
    if fmt == "safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
        assert set(load_file(str(path))) == set(state)
    else:
        torch.save({"model": state}, path)
    model = ViT(small())
    missing = load_timm_weights(model, read_state_dict(str(path)))
    assert set(missing) == {"head.weight", "head.bias"}
    torch.testing.assert_close(
        model.patch_embed.proj.weight, state["patch_embed.proj.weight"].sum(1, keepdim=True)
    )
    torch.testing.assert_close(model.blocks[1].attn.qkv.weight, state["blocks.1.attn.qkv.weight"])
    assert model.pos_embed.shape[1] == 1 + model.grid[0] * model.grid[1]
    assert torch.isfinite(model(torch.randn(2, 32, 48))).all()


def test_init_refuses_a_checkpoint_of_another_width():
    with pytest.raises(ValueError, match="width"):
        load_timm_weights(ViT(small()), imagenet_state(width=96, heads=4))


def _source(trained):
    obj = checkpoint.read_model_file(trained / "model.pt")
    return obj, obj["state_dict"]


def test_a_start_on_other_classes_loads_the_body_resamples_the_grid_and_makes_a_new_head(trained):
    obj, src = _source(trained)
    settings = start_settings(trained / "model.pt")
    assert settings["n_mels"] == obj["feature_config"]["n_mels"] == 32
    assert settings["stem"] == "conv" and settings["preset"] == "tiny" and settings["depth"] is None
    src_frames = obj["model_config"]["n_frames"]
    cfg = TrainConfig(**settings, init=str(trained / "model.pt"))
    model = build_model(cfg, n_classes=3, n_frames=src_frames + 64)  # a longer crop
    start = load_start(model, cfg.init, ["am_tone", "chord", "fm_tone"])
    ours = model.state_dict()
    for name in ("patch_embed.backbone.0.conv.weight", "patch_embed.backbone.0.bn.running_mean",
                 "blocks.11.mlp.fc2.weight", "norm.weight", "cls_token"):  # fmt: skip
        torch.testing.assert_close(ours[name], src[name])
    assert (
        start.resampled == ["pos_embed"] and ours["pos_embed"].shape[1] > src["pos_embed"].shape[1]
    )
    assert set(start.new) == {"head.weight", "head.bias"}
    assert start.n_loaded == len(ours) - 3
    assert start.labels == obj["labels"] and start.data["train"]["tone"] > 0
    assert "a new head (other classes)" in start.describe()


def test_a_shorter_crop_keeps_the_first_columns_of_the_position_grid(trained):
    obj, src = _source(trained)
    cfg = TrainConfig(**start_settings(trained / "model.pt"), init=str(trained / "model.pt"))
    model = build_model(cfg, n_classes=3, n_frames=obj["model_config"]["n_frames"] // 2)
    start = load_start(model, cfg.init, ["a", "b", "c"])
    (f, t), (_, t_new) = ModelConfig(**obj["model_config"]).grid(), model.grid
    assert start.resampled == ["pos_embed"] and t_new < t
    old_grid = src["pos_embed"][0, 1:].reshape(f, t, -1)
    new_grid = model.state_dict()["pos_embed"][0, 1:].reshape(f, t_new, -1)
    torch.testing.assert_close(new_grid, old_grid[:, :t_new])  # each patch where it was
    torch.testing.assert_close(model.state_dict()["pos_embed"][0, 0], src["pos_embed"][0, 0])


def test_a_start_on_the_same_classes_keeps_the_head(trained):
    obj, src = _source(trained)
    cfg = TrainConfig(**start_settings(trained / "model.pt"), init=str(trained / "model.pt"))
    model = build_model(cfg, n_classes=len(obj["labels"]), n_frames=obj["model_config"]["n_frames"])
    start = load_start(model, cfg.init, obj["labels"])
    assert start.new == [] and start.resampled == []
    torch.testing.assert_close(model.state_dict()["head.weight"], src["head.weight"])
    model.eval()
    x = torch.randn(2, 32, obj["model_config"]["n_frames"]) * 20 - 50
    source, *_ = checkpoint.load_model(trained / "model.pt")
    with torch.no_grad():
        torch.testing.assert_close(model(x), source(x))  # the same model, to the last weight


def test_a_start_of_another_architecture_is_one_clear_error(trained):
    cfg = TrainConfig(**{**start_settings(trained / "model.pt"), "preset": "small"})
    with pytest.raises(CheckpointError, match="width is 192, this run's 384"):
        load_start(build_model(cfg, 3, 48), trained / "model.pt", ["a", "b", "c"])
    cfg = TrainConfig(**{**start_settings(trained / "model.pt"), "stem": "patch"})
    with pytest.raises(CheckpointError, match="stem is conv, this run's patch"):
        load_start(build_model(cfg, 3, 48), trained / "model.pt", ["a", "b", "c"])


def test_train_from_a_model_records_its_lineage(trained, tmp_path):
    root = synth.make_dataset(tmp_path / "d", n_per_class=12, classes=["am_tone", "chord", "fm_tone"],
                              duration=1.0, seed=3)  # fmt: skip
    flags = [
        "--epochs",
        2,
        "--batch-size",
        16,
        "--warmup-epochs",
        1,
        "--no-amp",
        "--max-crop-s",
        0.8,
    ]
    r = run("train", root, "--out", tmp_path / "run", "--init", trained / "model.pt", *flags)
    assert "from the start" in r.stdout and "--n-mels 32" in r.stdout
    assert "a new head (other classes)" in r.stdout and "resampled (pos_embed)" in r.stdout
    info = json.loads(run("info", tmp_path / "run" / "model.pt", "--json").stdout)
    start = info["meta"]["start"]
    assert start["kind"] == "audiovit" and start["path"] == str(trained / "model.pt")
    assert start["labels"] == ["chirp", "click_train", "noise_bursts", "tone"]
    assert info["labels"] == ["am_tone", "chord", "fm_tone"]
    summary = run("info", tmp_path / "run" / "model.pt").stdout
    assert "classes (3): am_tone, chord, fm_tone" in summary
    assert f"started from: {trained / 'model.pt'} (audiovit; 4 classes)" in summary
    r = run("train", root, "--out", tmp_path / "bad", "--init", trained / "model.pt",
            "--preset", "small", check=False)  # fmt: skip
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "width is 192, this run's 384" in r.stderr


def test_a_dinov2_checkpoint_loads_with_its_layer_scale_folded_and_its_patches_resized():
    """ViT-S/14 in timm's DINOv2 layout: 14×14 patches, a 37×37 grid, LayerScale per branch."""
    state = imagenet_state(width=64, heads=4, layers=2, patch=14, side=37)
    for b in range(2):
        state[f"blocks.{b}.ls1.gamma"] = torch.rand(64) + 0.5
        state[f"blocks.{b}.ls2.gamma"] = torch.rand(64) + 0.5
    model = ViT(small())
    missing = load_timm_weights(model, state)
    assert set(missing) == {"head.weight", "head.bias"}
    assert model.patch_embed.proj.weight.shape == (64, 1, 16, 16)
    g = state["blocks.1.ls2.gamma"]
    torch.testing.assert_close(
        model.blocks[1].mlp.fc2.weight, state["blocks.1.mlp.fc2.weight"] * g[:, None]
    )
    torch.testing.assert_close(model.blocks[1].mlp.fc2.bias, state["blocks.1.mlp.fc2.bias"] * g)
    x = torch.randn(3, 64)  # the folded branch equals the scaled one
    branch = torch.nn.functional.linear(
        x, state["blocks.0.attn.proj.weight"], state["blocks.0.attn.proj.bias"]
    )
    torch.testing.assert_close(model.blocks[0].attn.proj(x), branch * state["blocks.0.ls1.gamma"])


@pytest.mark.parametrize("layout", ["vision_transformer", "big_vision"])
def test_a_jax_npz_checkpoint_reads_as_timm_computes(tmp_path, layout):
    """Flax's kernels, applied as Flax applies them, give what the renamed tensors give in
    timm's layers: patch convolution, q/k/v and output projections, the MLP."""
    D, H, K, side = 64, 4, 16, 14
    rng = np.random.default_rng(0)
    r = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    big = layout == "big_vision"
    pre, (mha, mlp, ln2) = ("params/", (0, 0, 1)) if big else ("", (1, 3, 2))
    w = {"embedding/kernel": r(16, 16, 3, D), "embedding/bias": r(D), "cls": r(1, 1, D),
         "pos_embedding" if big else "Transformer/posembed_input/pos_embedding": r(1, 1 + side**2, D),
         "Transformer/encoder_norm/scale": r(D), "Transformer/encoder_norm/bias": r(D)}  # fmt: skip
    for i in range(2):
        b, a = f"Transformer/encoderblock_{i}/", f"Transformer/encoderblock_{i}/MultiHeadDotProductAttention_{mha}/"  # fmt: skip
        for n in ("LayerNorm_0", f"LayerNorm_{ln2}"):
            w |= {f"{b}{n}/scale": r(D), f"{b}{n}/bias": r(D)}
        for n in ("query", "key", "value"):
            w |= {f"{a}{n}/kernel": r(D, H, K), f"{a}{n}/bias": r(H, K)}
        w |= {f"{a}out/kernel": r(H, K, D), f"{a}out/bias": r(D)}
        w |= {f"{b}MlpBlock_{mlp}/Dense_0/kernel": r(D, 4 * D), f"{b}MlpBlock_{mlp}/Dense_0/bias": r(4 * D),
              f"{b}MlpBlock_{mlp}/Dense_1/kernel": r(4 * D, D), f"{b}MlpBlock_{mlp}/Dense_1/bias": r(D)}  # fmt: skip
    np.savez(tmp_path / "vit.npz", **{pre + k: v for k, v in w.items()})
    state = read_state_dict(tmp_path / "vit.npz")
    T = torch.from_numpy
    x, img = r(5, D), r(16, 16, 3)
    a = f"Transformer/encoderblock_1/MultiHeadDotProductAttention_{mha}/"
    qkv = T(x) @ state["blocks.1.attn.qkv.weight"].T + state["blocks.1.attn.qkv.bias"]
    for j, n in enumerate(("query", "key", "value")):
        flax = np.einsum("nd,dhk->nhk", x, w[f"{a}{n}/kernel"]) + w[f"{a}{n}/bias"]
        torch.testing.assert_close(qkv[:, j * D : (j + 1) * D], T(flax.reshape(5, D)), atol=1e-4, rtol=1e-4)  # fmt: skip
    heads = r(5, H, K)
    flax = np.einsum("nhk,hkd->nd", heads, w[f"{a}out/kernel"]) + w[f"{a}out/bias"]
    torch_out = T(heads.reshape(5, D)) @ state["blocks.1.attn.proj.weight"].T + state["blocks.1.attn.proj.bias"]  # fmt: skip
    torch.testing.assert_close(torch_out, T(flax), atol=1e-4, rtol=1e-4)
    fc1 = f"Transformer/encoderblock_0/MlpBlock_{mlp}/Dense_0/kernel"
    torch.testing.assert_close(T(x) @ state["blocks.0.mlp.fc1.weight"].T, T(x @ w[fc1]), atol=1e-4, rtol=1e-4)  # fmt: skip
    conv = torch.nn.functional.conv2d(
        T(img).permute(2, 0, 1)[None], state["patch_embed.proj.weight"]
    )
    flax = np.einsum("hwc,hwco->o", img, w["embedding/kernel"])
    torch.testing.assert_close(conv.flatten(), T(flax), atol=1e-3, rtol=1e-4)
    model = ViT(small())
    assert set(load_timm_weights(model, state)) == {"head.weight", "head.bias"}
    assert torch.isfinite(model(torch.randn(2, 32, 48))).all()
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="junk.npz"):
        read_state_dict(tmp_path / "junk.npz")


def test_freeze_epochs_train_the_new_head_alone_then_the_whole_model(trained, tmp_path):
    root = synth.make_dataset(tmp_path / "d", n_per_class=8, classes=["am_tone", "chord", "fm_tone"],
                              duration=1.0, seed=3)  # fmt: skip
    ds = data.load_dataset(root)
    splits = data.make_splits(ds, data.SplitOptions(seed=0, valid_frac=0.2, test_frac=0.0))
    _, src = _source(trained)
    cfg = TrainConfig(**start_settings(trained / "model.pt"), init=str(trained / "model.pt"),
                      epochs=2, batch_size=8, warmup_epochs=0.5, amp=False, max_crop_s=0.8,
                      cache_dir=str(tmp_path / "cache"))  # fmt: skip

    def body_kept(freeze_epochs: float, out: str) -> tuple[bool, list[str]]:
        lines: list[str] = []
        train(
            ds, splits, replace(cfg, freeze_epochs=freeze_epochs), tmp_path / out, log=lines.append
        )
        obj = checkpoint.read_model_file(tmp_path / out / "model.pt")
        ours = obj["state_dict"]
        params = [k for k, _ in ViT(ModelConfig(**obj["model_config"])).named_parameters()]
        body = [k for k in params if not k.startswith("head.") and k != "pos_embed"]
        return all(torch.equal(ours[k], src[k]) for k in body), lines

    kept, lines = body_kept(2, "probe")  # the whole run: a linear probe
    assert kept and any("frozen for the whole run (a linear probe)" in s for s in lines)
    kept, lines = body_kept(1, "lpft")
    assert not kept and any("frozen for the first" in s for s in lines)
    with pytest.raises(ValueError, match="give an --init"):
        TrainConfig(freeze_epochs=1)
