"""Every side-by-side benchmark, one after the other (never two at once: the figures would
be off), then docs/benchmarks.md regenerated.

    python bench/run_all.py [--data DIR]
"""

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
SCRIPTS = ["bench_loader.py", "bench_train.py", "bench_predict.py", "bench_lr_find.py"]

if __name__ == "__main__":
    for script in SCRIPTS:
        print(f"== {script}", flush=True)
        subprocess.run([sys.executable, str(HERE / script), *sys.argv[1:]], check=True,
                       cwd=HERE)
