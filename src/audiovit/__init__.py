"""audiovit: train, evaluate and use Vision Transformer audio classifiers on log-mel spectrograms.

import audiovit
clf = audiovit.load_model("runs/demo/model.pt")
result = clf.predict("song.mp3", top_k=3)
result.label, result.score, result.top_k, result.segments

backbone = audiovit.pretrain(audiovit.PretrainConfig(steps=2000), "runs/pt", ["recordings/"])
cfg = audiovit.TrainConfig(**audiovit.start_settings(backbone), init=str(backbone))
"""

from .audio import AudioError
from .audio import load as load_audio
from .data import Dataset, SplitOptions, Splits, load_dataset, make_splits
from .features import FeatureConfig, LogMel
from .inference import Classifier, load_model
from .model import PRESETS, ModelConfig, ViT
from .prediction import Prediction
from .pretrain import PretrainConfig, pretrain
from .pretrained import start_settings
from .train import TrainConfig, train
from .version import __version__

__all__ = [
    "AudioError",
    "Classifier",
    "Dataset",
    "FeatureConfig",
    "LogMel",
    "ModelConfig",
    "PRESETS",
    "Prediction",
    "PretrainConfig",
    "SplitOptions",
    "Splits",
    "TrainConfig",
    "ViT",
    "load_audio",
    "load_dataset",
    "load_model",
    "make_splits",
    "pretrain",
    "start_settings",
    "train",
    "__version__",
]
