"""Run by test_distributed under torchrun (or alone): train, then save this rank's weights
and metrics. Usage: ddp_worker.py DATA BS OUT ARCH HEAD [ACCUM-STEPS]; with ACCUM-STEPS,
without augmentation."""

import gc
import json
import sys
from pathlib import Path

from safetensors.torch import save_file

from imageclf.core.config import AugConfig, DataConfig, TrainConfig
from imageclf.core.distributed import from_env, shutdown
from imageclf.run.runs import RunContext, build_learner

data, bs, out = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
accum = int(sys.argv[6]) if len(sys.argv) > 6 else 0
aug = AugConfig(flip_p=0.0, p_affine=0.0, p_lighting=0.0, min_scale=1.0) if accum else AugConfig()
dist, dev = from_env("cpu")
learn = build_learner(DataConfig.build(path=data, size=32, presize=40, bs=bs,
                                       cache_dir=str(out / "c"), aug=aug),
                      TrainConfig.build(arch=sys.argv[4], head=sys.argv[5], pretrained="none",
                                        precision="fp32", accum_steps=max(accum, 1)),
                      RunContext(dev, dist=dist))
learn.fit_one_cycle(2, 1e-3)
params = {k: v.detach().contiguous() for k, v in learn.model.named_parameters()}
save_file(params, out / f"rank{dist.rank}.safetensors")
(out / f"rank{dist.rank}.json").write_text(json.dumps({
    "rows": learn.history.rows, "world_size": dist.world_size,
    "valid_shard": sum(x.shape[0] for x, _ in learn.dls.valid),
    "valid_gathered": len(learn.get_preds()[1]), "n_train_batches": len(learn.dls.train)}))
# the DDP wrapper holds the process group: dropped here, while the interpreter is whole, it
# is not torn down in the interpreter's exit after destroy_process_group, where gloo's
# threads could abort the process ("terminate called without an active exception")
del learn
gc.collect()
shutdown(wait=True)
