"""ONNX export: the graph computes what torch computes, and the parity check notices
when it does not."""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
import pytest
import torch

from mlops.errors import ParityError
from mlops.onnx_export import (
    INPUT_NAME,
    OUTPUT_NAME,
    export_onnx,
    onnx_session,
    parity_check,
    sha256_bytes,
)
from mlops.training.loop import predict_proba
from mlops.training.model import MLPClassifier, Preprocess, TrainConfig

N_FEATURES = 5


def raw_features(n: int, seed: int) -> np.ndarray:
    """Raw (unscaled) values like serving gets: amounts, counts, signed values."""
    rng = np.random.default_rng(seed)
    return np.column_stack(
        [
            rng.lognormal(3, 1.5, n),
            rng.integers(0, 30, n),
            rng.normal(0, 10, n),
            rng.uniform(-1, 1, n) * 1e3,
            rng.integers(0, 2, n),
        ]
    ).astype(np.float32)


@pytest.fixture(scope="module")
def model() -> MLPClassifier:
    torch.manual_seed(0)
    x = raw_features(1000, seed=0)
    pre = Preprocess.fit(x, np.array([True, True, False, False, False]))
    return MLPClassifier(pre, N_FEATURES, TrainConfig(hidden=(32, 16), dropout=0.3)).eval()


@pytest.fixture(scope="module")
def proto(model: MLPClassifier) -> onnx.ModelProto:
    return export_onnx(model, N_FEATURES)


def test_graph_interface(proto: onnx.ModelProto) -> None:
    (inp,) = proto.graph.input
    (out,) = proto.graph.output
    assert (inp.name, out.name) == (INPUT_NAME, OUTPUT_NAME)
    in_dims = inp.type.tensor_type.shape.dim
    assert in_dims[0].dim_param == "batch"  # dynamic batch
    assert in_dims[1].dim_value == N_FEATURES
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert out.type.tensor_type.shape.dim[1].dim_value == 2


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_parity_on_random_inputs(model: MLPClassifier, proto: onnx.ModelProto, seed: int) -> None:
    x = raw_features(257, seed=seed)
    diff = parity_check(model, proto, x)
    assert 0.0 <= diff <= 1e-4


def test_onnx_output_is_the_torch_probabilities(
    model: MLPClassifier, proto: onnx.ModelProto
) -> None:
    session = onnx_session(proto)
    for n in (1, 2, 37):
        x = raw_features(n, seed=10 + n)
        (got,) = session.run([OUTPUT_NAME], {INPUT_NAME: x})
        assert got.shape == (n, 2)
        assert got.dtype == np.float32
        np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-6)
        p = predict_proba(model, x, torch.device("cpu"))
        np.testing.assert_allclose(got[:, 1], p, atol=1e-5)
        np.testing.assert_allclose(got[:, 0], 1.0 - p, atol=1e-5)


def test_scaling_is_inside_the_graph(model: MLPClassifier, proto: onnx.ModelProto) -> None:
    """Changing the stored training mean changes the ONNX output: preprocessing is part
    of the exported graph, so serving passes raw features."""
    x = raw_features(16, seed=4)
    shifted = MLPClassifier(
        Preprocess(
            model.preprocess.log_mask.numpy(),
            model.preprocess.mean.numpy() + 3.0,
            model.preprocess.std.numpy(),
        ),
        N_FEATURES,
        TrainConfig(hidden=(32, 16)),
    )
    shifted.net.load_state_dict(model.net.state_dict())
    (base,) = onnx_session(proto).run([OUTPUT_NAME], {INPUT_NAME: x})
    (moved,) = onnx_session(export_onnx(shifted.eval(), N_FEATURES)).run(
        [OUTPUT_NAME], {INPUT_NAME: x}
    )
    assert np.abs(base - moved).max() > 1e-3


def test_parity_error_when_the_model_changed(model: MLPClassifier, proto: onnx.ModelProto) -> None:
    x = raw_features(64, seed=5)
    changed = MLPClassifier(model.preprocess, N_FEATURES, TrainConfig(hidden=(32, 16)))
    changed.load_state_dict(model.state_dict())
    with torch.no_grad():
        changed.net[-1].bias += 2.0  # after export: the graph no longer matches
    with pytest.raises(ParityError, match=r"differ by .* \(tolerance 1e-12\)"):
        parity_check(changed, proto, x, tolerance=1e-12)
    # the change is large, so even the default tolerance notices it
    with pytest.raises(ParityError):
        parity_check(changed, proto, x)
    assert parity_check(model, proto, x) <= 1e-4  # the original still matches


def test_parity_check_puts_the_model_in_eval_mode(
    model: MLPClassifier, proto: onnx.ModelProto
) -> None:
    """Dropout is active in train mode; the check must compare inference outputs."""
    training = MLPClassifier(
        model.preprocess, N_FEATURES, TrainConfig(hidden=(32, 16), dropout=0.5)
    )
    training.load_state_dict(model.state_dict())
    training.train()
    assert parity_check(training, proto, raw_features(128, seed=6)) <= 1e-4


def test_export_is_deterministic(model: MLPClassifier, proto: onnx.ModelProto) -> None:
    again = export_onnx(model, N_FEATURES).SerializeToString()
    data = proto.SerializeToString()
    assert sha256_bytes(again) == sha256_bytes(data)
    assert sha256_bytes(data) == hashlib.sha256(data).hexdigest()
    assert len(sha256_bytes(data)) == 64
