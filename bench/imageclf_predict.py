"""Single-image latency of imageclf's Predictor (file → probabilities), in process.
Usage: imageclf_predict.py MODEL_DIR PRECISION FILE..."""

import json
import statistics
import sys
import time

import torch

from imageclf.model.predict import Predictor

torch.manual_seed(0)
model, precision, files = sys.argv[1], sys.argv[2], sys.argv[3:]
pred = Predictor(model, precision=precision)
for f in files[:5]:
    pred.predict(f)
times = []
for f in files[5:]:
    t0 = time.perf_counter()
    pred.predict(f)
    times.append((time.perf_counter() - t0) * 1000)
print(json.dumps({"tool": "imageclf", "precision": precision, "n": len(times),
                  "median_ms": statistics.median(times),
                  "p90_ms": sorted(times)[int(0.9 * len(times))]}))
