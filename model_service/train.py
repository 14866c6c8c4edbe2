"""Train the Titanic classifier and export it to ONNX so the service runs without sklearn or the CSV.

Usage: python -m model_service.train --data ../shared/data/titanic.csv [--out model_service/]
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

FEATURES = ["sex_encoded", "age", "pclass"]
DEFAULT_DATA = "../shared/data/titanic.csv"
MODEL_NAME = "titanic"
MODEL_VERSION = "1"
SPLIT_SEED = 42
MODEL_SEED = 0
TEST_SIZE = 0.2


@dataclass
class TrainResult:
    """Everything the exporter and the tests need from one training run."""

    model: Any
    X_train: np.ndarray
    X_test: np.ndarray
    y_train: np.ndarray
    y_test: np.ndarray
    age_median: float
    accuracy: float
    csv_sha256: str


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 16), b""):
            h.update(block)
    return h.hexdigest()


def load_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read features (float32, NaN for missing age) and labels from the processed CSV."""
    xs: list[list[float]] = []
    ys: list[int] = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            age = row["age"].strip()
            xs.append([float(row["sex_encoded"]), float(age) if age else float("nan"), float(row["pclass"])])
            ys.append(int(float(row["survived"])))
    return np.asarray(xs, dtype=np.float32), np.asarray(ys, dtype=np.int64)


def impute_age(X: np.ndarray, age_median: float) -> np.ndarray:
    X = X.copy()
    col = X[:, 1]
    col[np.isnan(col)] = age_median
    return X


def train(data_path: str | Path = DEFAULT_DATA) -> TrainResult:
    """Stratified 80/20 split, median-age imputation from the training part only, GradientBoosting fit."""
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.model_selection import train_test_split

    path = Path(data_path)
    X, y = load_csv(path)
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=TEST_SIZE, stratify=y, random_state=SPLIT_SEED
    )
    age_median = float(np.nanmedian(X_train[:, 1]))
    X_train = impute_age(X_train, age_median)
    X_test = impute_age(X_test, age_median)
    model = GradientBoostingClassifier(n_estimators=100, max_depth=3, learning_rate=0.1, random_state=MODEL_SEED)
    model.fit(X_train, y_train)
    accuracy = float((model.predict(X_test) == y_test).mean())
    return TrainResult(model, X_train, X_test, y_train, y_test, age_median, accuracy, sha256_file(path))


def to_onnx_bytes(model: Any) -> bytes:
    """Convert with zipmap disabled so outputs are plain tensors: label (int64) and probabilities (Nx2 float)."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType

    onx = to_onnx(
        model,
        initial_types=[("input", FloatTensorType([None, len(FEATURES)]))],
        options={id(model): {"zipmap": False}},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    return onx.SerializeToString()


def metadata(result: TrainResult) -> dict[str, Any]:
    import sklearn
    import skl2onnx

    return {
        "name": MODEL_NAME,
        "version": MODEL_VERSION,
        "model_type": type(result.model).__name__,
        "features": FEATURES,
        "feature_order": {name: i for i, name in enumerate(FEATURES)},
        "age_median": result.age_median,
        "accuracy": round(result.accuracy, 6),
        "n_train": int(len(result.y_train)),
        "n_test": int(len(result.y_test)),
        "split": {"test_size": TEST_SIZE, "stratified": True, "random_state": SPLIT_SEED},
        "data_sha256": result.csv_sha256,
        "sklearn_version": sklearn.__version__,
        "skl2onnx_version": skl2onnx.__version__,
        "outputs": {"label": "int64 [N]", "probabilities": "float32 [N,2] (died, survived)"},
    }


def export(result: TrainResult, out_dir: str | Path) -> tuple[Path, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    onnx_path = out / f"{MODEL_NAME}.onnx"
    meta_path = out / f"{MODEL_NAME}.json"
    onnx_path.write_bytes(to_onnx_bytes(result.model))
    meta_path.write_text(json.dumps(metadata(result), indent=2) + "\n")
    return onnx_path, meta_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default=DEFAULT_DATA, help="path to titanic.csv")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent), help="output directory")
    args = parser.parse_args(argv)
    if not Path(args.data).is_file():
        print(f"data file not found: {args.data}", file=sys.stderr)
        return 2
    result = train(args.data)
    onnx_path, meta_path = export(result, args.out)
    print(json.dumps({
        "model": type(result.model).__name__,
        "accuracy": round(result.accuracy, 4),
        "n_train": len(result.y_train),
        "n_test": len(result.y_test),
        "onnx": str(onnx_path),
        "metadata": str(meta_path),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
