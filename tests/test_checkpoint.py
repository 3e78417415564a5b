import pickle

import pytest
import torch

from audiovit import checkpoint
from audiovit.features import FeatureConfig
from audiovit.model import ModelConfig, ViT


def test_save_load_gives_identical_logits(tmp_path):
    model = ViT(
        ModelConfig(n_classes=3, n_mels=32, n_frames=48, width=64, n_layers=2, n_heads=2)
    ).eval()
    fcfg = FeatureConfig(n_mels=32, sr=8000)
    checkpoint.save_model(tmp_path / "m.pt", model, fcfg, ["a", "b", "c"], {"note": "x"})
    loaded, fcfg2, labels, meta = checkpoint.load_model(tmp_path / "m.pt")
    x = torch.randn(2, 32, 48)
    assert torch.equal(model(x), loaded(x))
    assert fcfg2 == fcfg and labels == ["a", "b", "c"] and meta == {"note": "x"}
    assert loaded.cfg == model.cfg


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("touch PWNED",))


def test_crafted_pickle_does_not_run_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"format": checkpoint.FORMAT, "x": _Evil()}, f)
    torch.save({"format": checkpoint.FORMAT, "payload": _Evil()}, tmp_path / "evil2.pt")
    for p in (path, tmp_path / "evil2.pt"):
        with pytest.raises(checkpoint.CheckpointError, match="not a loadable"):
            checkpoint.load_model(p)
    assert not (tmp_path / "PWNED").exists()


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "state.pt"
    checkpoint.atomic_save({"v": 1}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        checkpoint.atomic_save({"v": Unpicklable()}, path)
    assert checkpoint.safe_load(path) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]  # no temporary left behind


def test_torn_and_foreign_files_give_one_line(tmp_path):
    (tmp_path / "torn.pt").write_bytes(b"PK\x03\x04garbage")
    for p in (tmp_path / "torn.pt", tmp_path / "absent.pt"):
        with pytest.raises(checkpoint.CheckpointError) as e:
            checkpoint.load_model(p)
        assert str(p) in str(e.value) and "\n" not in str(e.value)
    torch.save({"format": "other"}, tmp_path / "other.pt")
    with pytest.raises(checkpoint.CheckpointError, match="not an audiovit model"):
        checkpoint.load_model(tmp_path / "other.pt")
