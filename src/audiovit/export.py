"""ONNX export of a model file (log-mel → logits) and an onnxruntime backend for prediction.

The graph takes log-mel windows in dB, (B, F, T) float32, and returns logits (B, C); the
per-example standardisation is inside it. The feature settings and labels are written beside it
as ``<name>.json``, so the exported pair is as self-describing as the model file.
"""

from __future__ import annotations

import importlib.util
import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from . import checkpoint
from .features import FeatureConfig
from .inference import Classifier
from .model import ModelConfig

FORMAT = "audiovit-onnx/1"


def export_onnx(
    model_path: str | os.PathLike, out: str | os.PathLike, *, opset: int = 17, int8: bool = False
) -> Path:
    """Write ``out`` (.onnx) and ``out`` with .json (labels, feature and model settings); with
    ``int8``, the graph's matrix products hold int8 weights and quantize their inputs on the fly
    (onnxruntime's dynamic quantization, the ONNX counterpart of the torch backend's int8)."""
    out = Path(out)
    if importlib.util.find_spec("onnx") is None:
        raise checkpoint.CheckpointError(
            "export needs the onnx package: pip install 'audiovit[onnx]' (onnx and onnxruntime)"
        )
    model, fcfg, labels, meta = checkpoint.load_model(model_path, "cpu")
    example = torch.randn(2, model.cfg.n_mels, model.cfg.n_frames) * 20 - 50
    out.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # shape checks become constants: the window length is fixed
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            model,
            (example,),
            str(out),
            input_names=["log_mel"],
            output_names=["logits"],
            dynamic_axes={"log_mel": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=opset,
            dynamo=False,
        )
    if int8:
        _quantize(out)
    sidecar = {
        "format": FORMAT,
        "labels": labels,
        "feature_config": fcfg.to_dict(),
        "model_config": model.cfg.to_dict(),
        "metrics": meta.get("metrics"),
        "precision": "int8" if int8 else "fp32",
    }
    out.with_suffix(".json").write_text(json.dumps(sidecar, indent=2, ensure_ascii=False))
    return out


class OnnxModel:
    """Callable like the ViT on (B, F, T) tensors, but run by onnxruntime."""

    def __init__(self, path: str | os.PathLike, model_config: dict):
        try:
            import onnxruntime as ort
        except ImportError:
            raise checkpoint.CheckpointError(
                f"{path}: the onnx backend needs onnxruntime (pip install 'audiovit[onnx]')"
            ) from None
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime's InvalidProtobuf, Fail, ...: not a usable graph
            msg = f"{path}: not a loadable ONNX model ({checkpoint.first_line(e)})"
            raise checkpoint.CheckpointError(msg) from None
        self.cfg = ModelConfig(**model_config)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        (logits,) = self.session.run(None, {"log_mel": x.detach().cpu().numpy().astype(np.float32)})
        return torch.from_numpy(logits)

    def to(self, device):  # the Classifier's interface; onnxruntime runs on the CPU here
        return self

    def eval(self):
        return self


def _quantize(path: Path) -> None:
    """Replace the fp32 graph at ``path`` by its dynamically quantized int8 form."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = path.with_name(path.name + ".fp32")
    path.replace(tmp)
    try:
        # the transformer's matrix products, as the torch backend quantizes; the conv stem stays
        quantize = ["MatMul", "Gemm"]
        quantize_dynamic(tmp, path, weight_type=QuantType.QInt8, op_types_to_quantize=quantize)
    finally:
        tmp.unlink()


def load_onnx(path: str | os.PathLike) -> Classifier:
    """A :class:`Classifier` whose windows are scored by onnxruntime."""
    path = Path(path)
    side = path.with_suffix(".json")
    if not path.is_file() or not side.is_file():
        raise checkpoint.CheckpointError(f"{path}: needs the .onnx file and its .json beside it")
    try:
        info = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise checkpoint.CheckpointError(f"{side}: not a readable sidecar ({e})") from None
    keys = ("format", "labels", "feature_config", "model_config")
    if not isinstance(info, dict) or not all(k in info for k in keys) or info["format"] != FORMAT:
        raise checkpoint.CheckpointError(f"{side}: not an audiovit ONNX sidecar")
    model = OnnxModel(path, info["model_config"])
    fcfg = FeatureConfig(**info["feature_config"])
    clf = Classifier(model, fcfg, info["labels"], device="cpu", precision="fp32")
    clf.precision = info.get("precision", "fp32")  # an int8 graph is int8 already
    return clf
