"""``audiovit demo``: synthesise a dataset, train a small ViT on it, evaluate, predict."""

from __future__ import annotations

import time
from pathlib import Path

from . import data, synth
from .inference import load_model
from .train import TrainConfig, train

# Small enough to train in about two minutes on two CPU cores; the recipe is the default one.
DEMO_CONFIG = dict(preset="tiny", epochs=40, n_mels=64, max_crop_s=1.5)


def run_demo(
    out: str | Path = "runs/demo", seed: int = 0, n_per_class: int = 60, log=print, **overrides
) -> dict:
    out = Path(out)
    t0 = time.perf_counter()
    root = synth.make_dataset(out / "data", n_per_class=n_per_class, seed=seed)
    ds = data.load_dataset(root)
    splits = data.make_splits(ds, data.SplitOptions(valid_frac=0.15, test_frac=0.15, seed=seed))
    log(f"synthesised {len(ds.items)} clips of {len(ds.labels)} classes in {root}\n")
    log(data.summary(ds.labels, splits) + "\n")
    cfg = TrainConfig(**{**DEMO_CONFIG, "seed": seed, "cache_dir": str(out / "cache"), **overrides})
    metrics = train(ds, splits, cfg, out, log=log, overwrite=True)  # the demo's own folder
    clf = load_model(out / "model.pt", device=cfg.device)
    log("\nheld-out files:")
    for it in splits.test[:: max(1, len(splits.test) // 6)][:6]:
        p = clf.predict(it.path, top_k=2)
        top = ", ".join(f"{lb} {s:.2f}" for lb, s in p.top_k)
        log(f"  {it.path.name:<22} true {it.label:<13} predicted {p.label:<13} ({top})")
    elapsed = time.perf_counter() - t0
    log(
        f"\ndemo finished in {elapsed:.0f} s; test accuracy {metrics['accuracy']:.3f}; "
        f"model in {out / 'model.pt'}"
    )
    return metrics
