"""fastai's own recipe: resnet18 from scratch, fit_one_cycle (run in fastai's venv)."""

import json
import sys
import time

t0 = time.perf_counter()
from fastai_recipe import recipe  # noqa: E402  (imports fastai: part of the setup time)

learn, epochs, lr = recipe(sys.argv[1:])
dls = learn.dls
t1 = time.perf_counter()
with learn.no_bar(), learn.no_logging():
    learn.fit_one_cycle(epochs, lr)
t2 = time.perf_counter()
valid_loss, acc = learn.validate()
rows = {"names": list(learn.recorder.metric_names),
        "values": [[float(x) for x in v] for v in learn.recorder.values]}
print(json.dumps({"tool": "fastai", "valid_accuracy": float(acc), "valid_loss": float(valid_loss),
                  "fit_seconds": t2 - t1, "setup_seconds": t1 - t0, "recorder": rows,
                  "num_workers": dls.train.num_workers}))
