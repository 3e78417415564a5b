"""Which time-frequency regions drove a prediction: gradient saliency over the log-mel.

For each window, the gradient of the predicted class's logit with respect to the input log-mel
(|∂logit/∂x|, Simonyan et al. 2014), weighted by the window's probability for that class (so
windows that voted for it dominate), averaged where windows overlap, smoothed over 3×3 cells.
Gradients rather than attention rollout: they need no attention weights (the model uses fused
scaled_dot_product_attention) and they point at mel bins and frames, not at 16×16 patches.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F

from .features import file_log_mel
from .inference import Classifier, frame_windows
from .prediction import Prediction


def saliency(
    clf: Classifier,
    path: str | os.PathLike,
    *,
    top_k: int = 3,
    max_seconds: float = 120.0,
    hop_s: float | None = None,
) -> tuple[Prediction, np.ndarray, np.ndarray, float]:
    """Explain the prediction for the first ``max_seconds`` of a file.

    Returns (prediction, log-mel (F, T), saliency (F, T) ≥ 0, seconds shown).
    Raises audio.AudioError for a file that cannot be decoded.
    """
    cfg = clf.feature_cfg
    with torch.inference_mode():  # decoding stops after max_seconds
        feats = file_log_mel(path, clf.logmel, max_frames=cfg.n_frames(max_seconds)).clone()
    T = feats.shape[1]
    windows, starts = frame_windows(feats, clf.win, clf.hop_frames(hop_s))
    x = windows.to(clf.device).requires_grad_(True)  # (W, F, win)
    clf.model.eval()
    with torch.enable_grad():
        logits = clf.model(x)
        probs = logits.detach().float().softmax(dim=-1).cpu()
        target = int(probs.mean(dim=0).argmax())
        logits[:, target].sum().backward()
    grad = x.grad.abs().cpu()  # (W, F, win)
    total, count = torch.zeros(feats.shape[0], max(T, clf.win)), torch.zeros(max(T, clf.win))
    weight = probs[:, target]  # windows count as much as they voted for the class
    for s, g, w in zip(starts, grad, weight):
        total[:, s : s + clf.win] += w * g
        count[s : s + clf.win] += 1
    sal = (total / count.clamp(min=1))[:, :T]
    sal = F.avg_pool2d(sal[None, None], 3, stride=1, padding=1, count_include_pad=False)[0, 0]
    pred = clf.make_prediction(starts, probs, T * cfg.hop_length / cfg.sr, top_k, str(path))
    return pred, feats.numpy(), sal.numpy(), cfg.seconds(T)
