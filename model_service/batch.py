"""The seed's batch job: score one random passenger and log predicted vs actual as one JSON line.

python -m model_service.batch [--data PATH] [--seed N]. Works without the CSV (synthetic passenger),
so the job image needs nothing but the committed ONNX model.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

from model_service.model import SEX_NAMES, get_model, parse_passenger, passenger_row
from model_service.train import DEFAULT_DATA, load_csv


def pick_passenger(data: Path, rng: random.Random) -> tuple[dict[str, Any], int | None, str]:
    """A random CSV row (with its true label) if the file exists, else a synthetic passenger."""
    if data.is_file():
        X, y = load_csv(data)
        i = rng.randrange(len(y))
        sex, age, pclass = (float(v) for v in X[i])
        if age != age:  # NaN: missing age in the source, use the model's training median
            age = float(get_model().metadata.get("age_median", 28.0))
        return {"sex": SEX_NAMES[sex], "age": age, "pclass": int(pclass)}, int(y[i]), f"csv:{i}"
    passenger = {"sex": rng.choice(["female", "male"]), "age": round(rng.uniform(1, 80), 1),
                 "pclass": rng.choice([1, 2, 3])}
    return passenger, None, "synthetic"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    raw, actual, source = pick_passenger(Path(args.data), rng)
    passenger = parse_passenger(raw)
    labels, probs = get_model().predict(passenger_row(passenger).reshape(1, -1))
    predicted = int(labels[0])
    print(json.dumps({
        "event": "batch_prediction", "ts": time.time(), "source": source, "passenger": passenger,
        "predicted": predicted, "probability": round(float(probs[0]), 6), "actual": actual,
        "correct": None if actual is None else predicted == actual,
    }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
