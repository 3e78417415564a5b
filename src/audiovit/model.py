"""A Vision Transformer over one-channel log-mel spectrograms.

Parameter names follow timm's ``VisionTransformer`` (``patch_embed.proj``, ``cls_token``,
``pos_embed``, ``blocks.N.attn.qkv`` ...) so ImageNet ViT/DeiT weights load by name
(:func:`load_timm_weights`). The model takes log-mel power in dB and returns logits; it
standardises each example itself, so no dataset statistics travel beside it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

PATCH = 16  # patch side in mel bins and frames, as in ViT/DeiT's 16×16
PLAIN_ATTENTION_MAX = 256  # tokens up to which CPU inference uses softmax(QKᵀ)V, not SDPA
# the conv stem's token spacings (patch_stride); 16: four stride-2 convs, as the 16×16 patches
CONV_STRIDES = (2, 4, 8, 16)

POOLS = ("cls", "mean")  # the choices of ModelConfig's string fields
NORMS = ("example", "band")
STEMS = ("patch", "conv")

PRESETS = {  # (width, n_layers, n_heads), as in DeiT
    "tiny": (192, 12, 3),
    "small": (384, 12, 6),
    "base": (768, 12, 12),
    # no transformer layer: the conv stem, mean-pooled, is a 4-layer CNN (48-96-192-384 wide,
    # 1.1 M parameters) — a baseline, and a teacher to distil from (TrainConfig.teacher)
    "cnn": (384, 0, 1),
}


@dataclass(frozen=True)
class ModelConfig:
    n_classes: int
    n_mels: int = 128  # input frequency bins (F)
    n_frames: int = 301  # input frames (T) the position embedding is laid out for
    patch_size: int = PATCH  # square patches, in bins × frames
    patch_stride: int = 16  # token spacing: < patch_size overlaps (AST: 10); conv: 2, 4, 8, 16
    width: int = 192  # token dimension (D)
    n_layers: int = 12
    n_heads: int = 3
    mlp_ratio: float = 4.0
    pool: str = "cls"  # "cls" token or "mean" of the patch tokens
    drop_path: float = 0.1  # stochastic depth at the last block, linear from 0
    head_dropout: float = 0.0
    top_db: float = 80.0  # dynamic range kept below each example's peak before standardising
    norm: str = "example"  # standardise each input by its own mean, or "band": each band's mean
    stem: str = "patch"  # "patch": one linear map per patch; "conv": 4 strided 3×3 convs (ConvStem)

    @classmethod
    def from_preset(cls, preset: str, **kw) -> ModelConfig:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
        width, n_layers, n_heads = PRESETS[preset]
        return cls(width=width, n_layers=n_layers, n_heads=n_heads, **kw)

    def grid(self, n_frames: int | None = None) -> tuple[int, int]:
        """Patches along frequency and time for an input of ``n_frames`` frames."""
        t = self.n_frames if n_frames is None else n_frames
        if self.stem == "conv":  # each stride-2 conv (padding 1) halves a side, rounding up
            s = self.patch_stride
            return -(-self.n_mels // s), -(-t // s)
        p, s = self.patch_size, self.patch_stride
        assert self.n_mels >= p and t >= p, f"input ({self.n_mels}×{t}) must be ≥ patch ({p})"
        return (self.n_mels - p) // s + 1, (t - p) // s + 1

    def to_dict(self) -> dict:
        return asdict(self)


def standardize(x: torch.Tensor, top_db: float, per_band: bool = False) -> torch.Tensor:
    """(B, F, T) dB → zero mean, unit variance per example, after flooring at peak − top_db.

    Per example (never across the batch), so a window scores the same alone or in any batch;
    silence maps to all zeros rather than NaN. ``per_band``: each band's mean over time is
    removed instead of the example's (cepstral mean normalisation: a fixed microphone or
    channel colouring, a constant in dB per band, cancels).
    """
    peak = x.amax(dim=(1, 2), keepdim=True)
    x = torch.maximum(x, peak - top_db)
    x = x - x.mean(dim=2 if per_band else (1, 2), keepdim=True)
    std = x.square().mean(dim=(1, 2), keepdim=True).sqrt()
    return x / (std + 1e-5)


class PatchEmbed(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.proj = nn.Conv2d(1, cfg.width, cfg.patch_size, cfg.patch_stride)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        x = self.proj(x[:, None])  # (B, 1, F, T) -> (B, D, Fp, Tp)
        grid = (x.shape[2], x.shape[3])
        return x.flatten(2).transpose(1, 2), grid  # (B, N, D), N = Fp * Tp


class ConvStem(nn.Module):
    """Four 3×3 stride-2 convolutions (BatchNorm, ReLU), widths D/8 → D, then a 1×1 projection
    to D: by default one token per 16×16 cell, as the patch embedding, but built from
    overlapping local filters ("Early convolutions help transformers see better", Xiao et al.
    2021). Adds ~10 % to ViT-tiny's arithmetic. ``patch_stride`` 8 (4, 2) gives the last one
    (two, three) convs stride 1: a token per 8×8 (4×4, 2×2) cell, 4× (16×, 64×) the tokens.
    Layers are named as timm's ConvNormAct (``backbone.N.conv``/``.bn``), then ``proj``; no
    ImageNet checkpoint provides them (load_timm_weights leaves them random).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        widths = [1] + [cfg.width // 8 * 2**i for i in range(4)]  # 1, D/8, D/4, D/2, D
        n_halvings = cfg.patch_stride.bit_length() - 1  # log2 of the token spacing
        self.backbone = nn.Sequential(
            *(ConvBnAct(a, b, 2 if i < n_halvings else 1)
              for i, (a, b) in enumerate(zip(widths, widths[1:])))
        )  # fmt: skip
        self.proj = nn.Conv2d(widths[-1], cfg.width, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        x = self.proj(self.backbone(x[:, None]))  # (B, 1, F, T) -> (B, D, ⌈F/s⌉, ⌈T/s⌉)
        grid = (x.shape[2], x.shape[3])
        return x.flatten(2).transpose(1, 2), grid  # (B, N, D)


class ConvBnAct(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int = 2):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class Attention(nn.Module):
    def __init__(self, dim: int, n_heads: int):
        super().__init__()
        assert dim % n_heads == 0, f"width ({dim}) must be divisible by n_heads ({n_heads})"
        self.n_heads = n_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.n_heads, D // self.n_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, nh, N, hs)
        if x.device.type == "cpu" and not torch.is_grad_enabled() and N <= PLAIN_ATTENTION_MAX:
            # Inference on a CPU: at these lengths (~80 tokens) the plain product runs in about
            # half the time of SDPA's kernel (benchmarks/profile_predict.py); it holds the
            # (B, heads, N, N) scores, so long inputs go to SDPA
            att = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)  # (B, nh, N, N)
            x = att.softmax(dim=-1).to(v.dtype) @ v
        else:
            x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(B, N, D))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, n_heads: int, mlp_ratio: float, drop_path: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, n_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = drop_path

    def _drop(self, x: torch.Tensor) -> torch.Tensor:
        """Stochastic depth: drop the whole residual branch of random examples."""
        if not self.training or self.drop_path == 0.0:
            return x
        keep = 1.0 - self.drop_path
        mask = x.new_empty(x.shape[0], 1, 1).bernoulli_(keep)
        return x * mask / keep

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self._drop(self.attn(self.norm1(x)))
        return x + self._drop(self.mlp(self.norm2(x)))


class ViT(nn.Module):
    """Log-mel (B, F, T) in dB → logits (B, n_classes)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        for name, allowed in (("pool", POOLS), ("norm", NORMS), ("stem", STEMS)):
            if getattr(cfg, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}; "
                                 f"got {getattr(cfg, name)!r}")  # fmt: skip
        if cfg.n_layers == 0 and cfg.stem != "conv":
            raise ValueError("a model with no transformer layer needs the conv stem (stem='conv')")
        if cfg.stem == "conv" and (cfg.patch_size != PATCH or cfg.patch_stride not in CONV_STRIDES):
            raise ValueError(f"the conv stem's patch_stride (token spacing) must be one of "
                             f"{', '.join(map(str, CONV_STRIDES))}, and patch_size "
                             f"{PATCH}")  # fmt: skip
        self.cfg = cfg
        D = cfg.width
        self.patch_embed = ConvStem(cfg) if cfg.stem == "conv" else PatchEmbed(cfg)
        self.grid = cfg.grid()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + self.grid[0] * self.grid[1], D) * 0.02)
        rates = [cfg.drop_path * i / max(1, cfg.n_layers - 1) for i in range(cfg.n_layers)]
        self.blocks = nn.ModuleList(Block(D, cfg.n_heads, cfg.mlp_ratio, r) for r in rates)
        self.norm = nn.LayerNorm(D, eps=1e-6)
        self.head_drop = nn.Dropout(cfg.head_dropout)
        self.head = nn.Linear(D, cfg.n_classes)
        self.apply(_init_weights)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def _pos_embed(self, grid: tuple[int, int]) -> torch.Tensor:
        """Position embedding (1, 1 + Fp*Tp, D), resampled along time for other input lengths."""
        if grid == self.grid:
            return self.pos_embed
        return resample_pos_embed(self.pos_embed, self.grid, grid, n_prefix=1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, F, T) dB → tokens (B, 1 + N, D) after the final norm."""
        assert x.shape[1] == self.cfg.n_mels, (
            f"expected {self.cfg.n_mels} mel bins, got {x.shape[1]}"
        )
        x = standardize(x.float(), self.cfg.top_db, per_band=self.cfg.norm == "band")
        x, grid = self.patch_embed(x)  # (B, N, D)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)  # (B, 1 + N, D)
        x = x + self._pos_embed(grid)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens (B, 1 + N, D) → logits (B, C)."""
        x = x[:, 0] if self.cfg.pool == "cls" else x[:, 1:].mean(dim=1)
        return self.head(self.head_drop(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv2d) and m.bias is None:  # a stem conv before BN + ReLU: He init
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    elif isinstance(m, nn.Conv2d):  # as a linear layer over the flattened patch (timm, MAE)
        nn.init.xavier_uniform_(m.weight.view(m.weight.shape[0], -1))
        nn.init.zeros_(m.bias)


def resample_pos_embed(
    pos: torch.Tensor, old: tuple[int, int], new: tuple[int, int], n_prefix: int
) -> torch.Tensor:
    """(1, n_prefix + old_F*old_T, D) → (1, n_prefix + new_F*new_T, D), bilinear on the grid."""
    prefix, grid = pos[:, :n_prefix], pos[:, n_prefix:]
    D = grid.shape[-1]
    assert grid.shape[1] == old[0] * old[1], f"pos_embed has {grid.shape[1]} tokens, grid {old}"
    grid = grid.reshape(1, old[0], old[1], D).permute(0, 3, 1, 2)  # (1, D, oF, oT)
    grid = F.interpolate(grid, size=new, mode="bilinear", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new[0] * new[1], D)
    return torch.cat([prefix, grid], dim=1)


def load_timm_weights(model: ViT, state: dict[str, torch.Tensor]) -> list[str]:
    """Start ``model`` from an ImageNet ViT/DeiT state dict in timm's layout, as AST did.

    The RGB patch kernels are summed into one channel (and resized if the patch size differs),
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
        k: v for k, v in state.items()
        if k in ours and not k.startswith("head.") and v.shape == ours[k].shape
    }  # fmt: skip
    missing = [k for k in ours if k not in usable]
    if not usable:
        raise ValueError("no parameter of the checkpoint matches this ViT (is it a timm ViT?)")
    model.load_state_dict(usable, strict=False)
    return missing


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` → CUDA when present, else CPU; anything else is passed to torch.device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 where the hardware runs it fast (CUDA with bf16, CPUs with AVX-512 BF16/AMX)."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu":
        probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        if any(getattr(torch.cpu, p, lambda: False)() for p in probes):
            return torch.bfloat16
    return None
