import json

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")

import audiovit  # noqa: E402
from audiovit.export import export_onnx, load_onnx  # noqa: E402
from helpers import run  # noqa: E402


def test_onnx_logits_match_eager_pytorch(trained, tmp_path):
    out = export_onnx(trained / "model.pt", tmp_path / "model.onnx")
    eager = audiovit.load_model(trained / "model.pt", device="cpu", precision="fp32")
    onnx = load_onnx(out)
    assert onnx.labels == eager.labels and onnx.feature_cfg == eager.feature_cfg
    x = torch.randn(7, eager.feature_cfg.n_mels, eager.win) * 15 - 40
    x[3] = -100.0  # silence
    with torch.inference_mode():
        expected = eager.model(x)
    got = onnx.model(x)
    assert (got - expected).abs().max().item() <= 1e-4


def test_predict_with_the_onnx_backend(trained, synth_root, tmp_path):
    run("export", trained / "model.pt", "--format", "onnx", "--out", tmp_path / "m.onnx")
    path = sorted((synth_root / "tone").glob("*.wav"))[0]
    expected = audiovit.load_model(trained / "model.pt", device="cpu", precision="fp32").predict(
        path
    )
    r = run("predict", tmp_path / "m.onnx", path, "--backend", "onnx", "--json")
    got = json.loads(r.stdout)
    assert got["label"] == expected.label and got["score"] == pytest.approx(
        expected.score, abs=1e-4
    )
    np.testing.assert_allclose(
        load_onnx(tmp_path / "m.onnx").predict(path).probs, expected.probs, atol=1e-5
    )


def test_a_broken_onnx_pair_is_named_in_one_line(tmp_path):
    from audiovit.checkpoint import CheckpointError
    from audiovit.export import FORMAT

    onnx_file, side = tmp_path / "m.onnx", tmp_path / "m.json"
    onnx_file.write_bytes(b"not a graph")
    side.write_text("{ truncated")
    with pytest.raises(CheckpointError, match="m.json: not a readable sidecar"):
        load_onnx(onnx_file)
    side.write_text(json.dumps({"format": FORMAT, "labels": ["a"]}))  # configs missing
    with pytest.raises(CheckpointError, match="m.json: not an audiovit ONNX sidecar"):
        load_onnx(onnx_file)
    side.write_text(json.dumps({"format": FORMAT, "labels": ["a"], "feature_config": {},
                                "model_config": {"n_frames": 16, "n_mels": 16}}))  # fmt: skip
    with pytest.raises(CheckpointError, match="m.onnx: not a loadable ONNX model"):
        load_onnx(onnx_file)


def test_an_onnx_file_is_run_by_onnxruntime_whatever_the_backend_flag(
    trained, synth_root, tmp_path
):
    export_onnx(trained / "model.pt", tmp_path / "m.onnx")
    path = sorted((synth_root / "chirp").glob("*.wav"))[0]
    r = run("predict", tmp_path / "m.onnx", path, "--json")  # no --backend onnx
    assert json.loads(r.stdout)["label"] == load_onnx(tmp_path / "m.onnx").predict(path).label


def test_export_without_onnx_names_the_extra(trained, tmp_path, monkeypatch):
    import importlib.util

    from audiovit.checkpoint import CheckpointError

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "onnx" else real(name, *a)
    )
    with pytest.raises(CheckpointError, match=r"pip install 'audiovit\[onnx\]'"):
        export_onnx(trained / "model.pt", tmp_path / "m.onnx")
