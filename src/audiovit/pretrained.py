"""Starting weights: a ViT begun from weights trained elsewhere instead of at random.

Two kinds of start load into a model being trained (``TrainConfig.init``):
- an audiovit model file: stem, blocks, norms and position embedding (its grid cut to a shorter
  crop, resampled to a longer one or another mel count), and the head where the classes are the
  same;
- an image-pretrained ViT/DeiT in timm's layout, as the Audio Spectrogram Transformer did: RGB
  patch kernels summed into one channel, the square position grid resampled to the
  spectrogram's.
Either way a :class:`Start` records what loaded, what was resampled and what is new, and it is
kept in the new model's file, so a model's lineage can be read back.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from . import checkpoint
from .checkpoint import CheckpointError, safe_load
from .model import PRESETS, ModelConfig, ViT, resample_pos_embed

# the settings a start made from an audiovit model passes on to the run (TrainConfig fields)
FEATURE_FIELDS = ("sr", "n_mels", "fmax")
MODEL_FIELDS = ("stem", "pool", "norm", "patch_stride")


@dataclass
class Start:
    """Where a model's weights began; stored in its model file's meta as ``start``."""

    path: str  # the file, as given
    kind: str  # "audiovit" (a model file) or "timm" (an image checkpoint)
    n_loaded: int  # tensors taken as they were
    resampled: list[str] = field(default_factory=list)  # taken after resampling
    new: list[str] = field(default_factory=list)  # left at their random init
    labels: list[str] | None = None  # the source model's classes
    data: dict | None = None  # the source model's data summary (clips per class and split)
    start: dict | None = None  # the source model's own start: lineage

    def describe(self) -> str:
        """One line for the training log."""
        parts = [f"{self.n_loaded} tensors loaded"]
        if self.resampled:
            parts.append(f"{len(self.resampled)} resampled ({', '.join(self.resampled)})")
        heads = [k for k in self.new if k.startswith("head.")]
        others = [k for k in self.new if not k.startswith("head.")]
        if heads:
            parts.append("a new head" + ("" if self.labels is None else " (other classes)"))
        if others:
            parts.append(f"{len(others)} others new")
        return f"started from {self.path} ({self.kind}): {', '.join(parts)}"

    def to_dict(self) -> dict:
        return asdict(self)


def read_state_dict(path: str | os.PathLike) -> dict:
    """The tensors of a ``.safetensors`` file, of a JAX ``.npz`` ViT checkpoint (renamed to
    timm's layout: :func:`npz_to_timm`), or of a torch file (loaded without running code)."""
    if str(path).endswith(".npz"):
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except Exception as e:  # BadZipFile, ValueError (pickled objects), OSError
            raise CheckpointError(f"{path}: not a readable .npz file ({e})") from None
        return npz_to_timm(arrays, path)
    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except Exception as e:  # SafetensorError (not a public class), OSError
            msg = f"{path}: not a readable safetensors file ({e})"
            raise CheckpointError(msg) from None
    return safe_load(path)


def npz_to_timm(w: dict[str, np.ndarray], path: str | os.PathLike = "") -> dict:
    """A JAX ViT checkpoint (Google's ``vision_transformer`` or big_vision ``.npz``, as timm's
    ``_load_weights`` reads it) → tensors named as timm's ViT. Flax stores dense kernels (in,
    out), attention kernels (D, heads, head_dim) and (heads, head_dim, D), and convolution
    kernels (h, w, in, out)."""
    prefix = next((p for p in ("opt/target/", "params/", "") if f"{p}embedding/kernel" in w), None)
    if prefix is None:
        raise CheckpointError(f"{path}: no 'embedding/kernel' array: not a JAX ViT checkpoint")
    big_vision = prefix == "params/"
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).float()  # noqa: E731
    get = lambda k: w[prefix + k]  # noqa: E731
    pos = "pos_embedding" if big_vision else "Transformer/posembed_input/pos_embedding"
    out = {
        "patch_embed.proj.weight": t(get("embedding/kernel").transpose(3, 2, 0, 1)),
        "patch_embed.proj.bias": t(get("embedding/bias")),
        "pos_embed": t(get(pos)),
        "norm.weight": t(get("Transformer/encoder_norm/scale")),
        "norm.bias": t(get("Transformer/encoder_norm/bias")),
    }
    if prefix + "cls" in w:
        out["cls_token"] = t(get("cls"))
    mha, mlp, ln2 = (0, 0, 1) if big_vision else (1, 3, 2)  # the two codebases' module indices
    i = 0
    while f"{prefix}Transformer/encoderblock_{i}/LayerNorm_0/scale" in w:
        b, o = f"Transformer/encoderblock_{i}/", f"blocks.{i}."
        a = f"{b}MultiHeadDotProductAttention_{mha}/"
        names = ("query", "key", "value")
        qkv = [get(f"{a}{n}/kernel").reshape(get(f"{a}{n}/kernel").shape[0], -1) for n in names]
        out |= {
            o + "norm1.weight": t(get(f"{b}LayerNorm_0/scale")),
            o + "norm1.bias": t(get(f"{b}LayerNorm_0/bias")),
            o + "attn.qkv.weight": t(np.concatenate(qkv, axis=1).T),  # (3D, D)
            o + "attn.qkv.bias": t(np.concatenate([get(f"{a}{n}/bias").ravel() for n in names])),
            o + "attn.proj.weight": t(get(f"{a}out/kernel").reshape(-1, qkv[0].shape[0]).T),
            o + "attn.proj.bias": t(get(f"{a}out/bias")),
            o + "norm2.weight": t(get(f"{b}LayerNorm_{ln2}/scale")),
            o + "norm2.bias": t(get(f"{b}LayerNorm_{ln2}/bias")),
        }
        for r in range(2):
            d = f"{b}MlpBlock_{mlp}/Dense_{r}/"
            out[o + f"mlp.fc{r + 1}.weight"] = t(get(d + "kernel").T)
            out[o + f"mlp.fc{r + 1}.bias"] = t(get(d + "bias"))
        i += 1
    return out


def load_timm_weights(model: ViT, state: dict[str, torch.Tensor]) -> list[str]:
    """Start ``model`` from an ImageNet ViT/DeiT/DINOv2 state dict in timm's layout, as AST did.

    The RGB patch kernels are summed into one channel (and resized if the patch size differs:
    DINOv2's 14 → 16), DINOv2's LayerScale is folded into the layers it scales,
    the position embedding is resampled to the spectrogram's patch grid, a DeiT distillation
    token is averaged into the class token, and the classifier head is left untouched.
    Returns the names of the model's parameters that the checkpoint did not provide.
    """
    state = dict(state)
    for wrapper in ("model", "state_dict"):
        if wrapper in state and isinstance(state[wrapper], dict):
            state = dict(state[wrapper])
    ours = model.state_dict()
    if "cls_token" in state and state["cls_token"].shape[-1] != model.cfg.width:
        raise ValueError(
            f"checkpoint width {state['cls_token'].shape[-1]} differs from the model's "
            f"{model.cfg.width}: pick the preset that matches it"
        )
    state = _fold_layer_scale(state)
    if model.cfg.stem == "conv":  # a timm ViT's patch embedding has no counterpart in the stem
        state = {k: v for k, v in state.items() if not k.startswith("patch_embed.")}
    w = state.get("patch_embed.proj.weight")
    if w is not None:
        w = w.float().sum(dim=1, keepdim=True)  # (D, 3, p, p) -> (D, 1, p, p)
        p = model.cfg.patch_size
        if w.shape[-1] != p:
            w = F.interpolate(w, size=(p, p), mode="bicubic", align_corners=False)
        state["patch_embed.proj.weight"] = w
    pos = state.get("pos_embed")
    if pos is not None:
        n_prefix = 2 if "dist_token" in state else 1
        if n_prefix == 2:
            state["cls_token"] = (state["cls_token"] + state.pop("dist_token")) / 2
            pos = torch.cat([pos[:, :2].mean(dim=1, keepdim=True), pos[:, 2:]], dim=1)
        side = math.isqrt(pos.shape[1] - 1)
        state["pos_embed"] = resample_pos_embed(pos.float(), (side, side), model.grid, 1)
    usable = {
        k: v
        for k, v in state.items()
        if k in ours and not k.startswith("head.") and v.shape == ours[k].shape
    }
    missing = [k for k in ours if k not in usable]
    if not usable:
        raise ValueError("no parameter of the checkpoint matches this ViT (is it a timm ViT?)")
    model.load_state_dict(usable, strict=False)
    return missing


def read_start(path: str | os.PathLike) -> tuple[dict | None, dict | None]:
    """Read a start once: (the audiovit model file's contents, None), or (None, an image
    checkpoint's state dict)."""
    if str(path).endswith((".safetensors", ".npz")):
        return None, read_state_dict(path)
    obj = safe_load(path)
    return (obj, None) if obj.get("format") == checkpoint.FORMAT else (None, obj)


def start_settings(path: str | os.PathLike) -> dict:
    """The TrainConfig settings a run started from the audiovit model file ``path`` takes from it
    unless told otherwise: its features (sample rate, mel bands, fmax) and its architecture
    (preset, depth, stem, pooling, normalisation, token spacing). An image checkpoint: none."""
    obj, _ = read_start(path)
    if obj is None:
        return {}
    mcfg, fcfg = obj["model_config"], obj["feature_config"]
    preset = next(
        (name for name, p in PRESETS.items()
         if (p.width, p.n_heads) == (mcfg["width"], mcfg["n_heads"]) and p.n_layers),
        None,
    )  # fmt: skip
    if preset is None:
        raise CheckpointError(
            f"{path}: a model {mcfg['width']} wide with {mcfg['n_heads']} heads matches no preset"
        )
    depth = None if mcfg["n_layers"] == PRESETS[preset].n_layers else mcfg["n_layers"]
    if mcfg["n_layers"] == 0:
        preset, depth = "cnn", None
    return {
        **{k: fcfg[k] for k in FEATURE_FIELDS},
        **{k: mcfg[k] for k in MODEL_FIELDS},
        "preset": preset,
        "depth": depth,
    }


def load_start(model: ViT, path: str | os.PathLike, labels: list[str]) -> Start:
    """Load the start at ``path`` into ``model`` (trained for ``labels``), in place."""
    obj, image_state = read_start(path)
    if obj is not None:
        return _load_audiovit(model, path, obj, labels)
    missing = load_timm_weights(model, image_state)
    n_loaded = len(model.state_dict()) - len(missing)
    resampled = [k for k in ("pos_embed", "patch_embed.proj.weight") if k not in missing]
    return Start(str(path), "timm", n_loaded - len(resampled), resampled, missing)


def _load_audiovit(model: ViT, path: str | os.PathLike, obj: dict, labels: list[str]) -> Start:
    src = ModelConfig(**obj["model_config"])
    cfg = model.cfg
    for name in ("width", "stem", "patch_size", "n_layers", "n_heads"):
        if getattr(src, name) != getattr(cfg, name):
            raise CheckpointError(
                f"{path}: its {name} is {getattr(src, name)}, this run's {getattr(cfg, name)}: "
                f"a start must have the same architecture (leave --{name.replace('_', '-')} "
                "and --preset/--depth unset to take the start's)"
            )
    state, ours = dict(obj["state_dict"]), model.state_dict()
    resampled = []
    if src.grid() != model.grid:
        state["pos_embed"] = fit_time_grid(state["pos_embed"].float(), src.grid(), model.grid)
        resampled.append("pos_embed")
    same_classes = list(obj["labels"]) == list(labels)
    if not same_classes:
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
    usable = {k: v for k, v in state.items() if k in ours and v.shape == ours[k].shape}
    model.load_state_dict(usable, strict=False)
    meta = obj.get("meta") or {}
    return Start(
        path=str(path),
        kind="audiovit",
        n_loaded=len(usable) - len(resampled),
        resampled=resampled,
        new=[k for k in ours if k not in usable],
        labels=list(obj["labels"]),
        data=(meta.get("data") or {}).get("counts"),
        start=meta.get("start"),
    )


def fit_time_grid(pos: torch.Tensor, old: tuple[int, int], new: tuple[int, int]) -> torch.Tensor:
    """An audio model's ``pos_embed`` (1, 1 + F*T, D) for another (F, T) grid. A patch spans the
    same time whatever the crop, so a shorter crop keeps the first columns, each patch's
    position where it was; a longer crop, or another mel count, is resampled (bilinear).
    Stretching a 3 s grid onto a 0.5 s crop instead would space its patches six columns apart."""
    if new[1] < old[1]:
        D = pos.shape[-1]
        grid = pos[:, 1:].reshape(1, old[0], old[1], D)[:, :, : new[1]]
        pos, old = torch.cat([pos[:, :1], grid.reshape(1, -1, D)], dim=1), (old[0], new[1])
    return pos if old == new else resample_pos_embed(pos, old, new, 1)


def _fold_layer_scale(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """DINOv2's LayerScale (``blocks.N.ls1.gamma``, ``ls2.gamma``: a per-channel factor on the
    attention and MLP branches) folded into the output projections it follows:
    γ ⊙ (W x + b) = (γ W) x + γ b, exactly; our blocks have no LayerScale."""
    state = dict(state)
    for key in [k for k in state if k.endswith((".ls1.gamma", ".ls2.gamma"))]:
        block, ls = key.rsplit(".", 2)[0], key.rsplit(".", 2)[1]
        layer = f"{block}.attn.proj" if ls == "ls1" else f"{block}.mlp.fc2"
        gamma = state.pop(key).float()
        state[f"{layer}.weight"] = state[f"{layer}.weight"].float() * gamma[:, None]
        state[f"{layer}.bias"] = state[f"{layer}.bias"].float() * gamma
    return state
