"""Every side-by-side benchmark, one after the other (never two at once: the figures would
be off), then docs/benchmarks.md regenerated. On a machine with a CUDA GPU the device
benchmark (resnet50 at 224, batch 128, end to end vs ceiling) runs too.

    python bench/run_all.py [--data DIR]
"""

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
SCRIPTS = ["bench_loader.py", "bench_train.py", "bench_predict.py", "bench_lr_find.py",
           "bench_lr_rules.py", "bench_ddp.py", "bench_serve.py", "bench_time_to_accuracy.py",
           "bench_open_set.py", "bench_imbalance.py"]

if __name__ == "__main__":
    import torch

    if torch.cuda.is_available():
        SCRIPTS.append("bench_device.py")
    for script in SCRIPTS:
        print(f"== {script}", flush=True)
        subprocess.run([sys.executable, str(HERE / script), *sys.argv[1:]], check=True,
                       cwd=HERE)
