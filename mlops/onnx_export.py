"""ONNX export of a trained classifier, and the parity check against torch.

The graph takes raw features (``features``: float32 [N, F]) and returns
``probabilities`` (float32 [N, 2]); scaling happens inside.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from mlops.errors import ParityError
from mlops.training.model import MLPClassifier, ProbabilityHead

INPUT_NAME = "features"
OUTPUT_NAME = "probabilities"


def export_onnx(model: MLPClassifier, n_features: int) -> onnx.ModelProto:
    head = ProbabilityHead(model).cpu().eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        torch.onnx.export(
            head,
            (torch.zeros(2, n_features, dtype=torch.float32),),
            path,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
        proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    return proto


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def onnx_session(proto: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])


def parity_check(
    model: MLPClassifier, proto: onnx.ModelProto, x: np.ndarray, *, tolerance: float = 1e-4
) -> float:
    """Max abs difference of the probabilities from torch and onnxruntime on ``x``.

    Raises :class:`ParityError` above ``tolerance``.
    """
    head = ProbabilityHead(model).cpu().eval()
    with torch.no_grad():
        expected = head(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()
    got = onnx_session(proto).run([OUTPUT_NAME], {INPUT_NAME: x.astype(np.float32)})[0]
    diff = float(np.max(np.abs(np.asarray(got) - expected))) if len(x) else 0.0
    if not diff <= tolerance:
        raise ParityError(f"ONNX and torch differ by {diff:.3g} (tolerance {tolerance:g})")
    return diff
