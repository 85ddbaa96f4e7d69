"""The loops people write to classify a folder, for bench_batch_predict.py: each prints one
JSON line {"images", "seconds"} (the loop only; model built before the clock starts).

    python bench/predict_loops.py pil CSV SIZE BS WORKERS
    python bench/predict_loops.py timm CSV SIZE BS WORKERS

- pil: a torch Dataset opening each file with PIL, torchvision's Resize(SIZE * 256/224) +
  CenterCrop(SIZE) + ToTensor + Normalize, a DataLoader with WORKERS processes, torchvision
  resnet18 (10 classes), softmax + top-5, rows collected as Python dicts.
- timm: what timm's inference.py does: timm's `ImageDataset` over the files (a reader of the list),
  `resolve_data_config` + `create_loader` (its prefetcher off on a CPU), timm's resnet18,
  top-5, a pandas-free list of rows (inference.py then writes CSV/Parquet).
Both fp32, the process's torch threads for the model (the DataLoader's workers run the
decoding)."""

from __future__ import annotations

import csv
import json
import sys
import time

import torch


def _files(csv_path: str) -> list[str]:
    with open(csv_path, newline="") as f:
        return [r[0] for r in csv.reader(f)][1:]


def pil_loop(files: list[str], size: int, bs: int, workers: int) -> dict:
    import torchvision
    from PIL import Image
    from torchvision import transforms as T

    tf = T.Compose([T.Resize(round(size * 256 / 224)), T.CenterCrop(size), T.ToTensor(),
                    T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])

    class Files(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(files)

        def __getitem__(self, i: int):
            with Image.open(files[i]) as im:
                return tf(im.convert("RGB")), i

    model = torchvision.models.resnet18(num_classes=10).eval()
    dl = torch.utils.data.DataLoader(Files(), batch_size=bs, num_workers=workers)
    return _run(model, dl, files)


def timm_loop(files: list[str], size: int, bs: int, workers: int) -> dict:
    import timm
    from timm.data import ImageDataset, create_loader, resolve_data_config

    model = timm.create_model("resnet18", num_classes=10).eval()
    cfg = resolve_data_config({"input_size": (3, size, size)}, model=model)
    class ListReader:  # timm's own Reader over a list of files
        def __init__(self) -> None:
            self.samples = [(f, 0) for f in files]

        def __getitem__(self, i: int):
            return open(self.samples[i][0], "rb"), 0  # noqa: SIM115 - timm closes it

        def __len__(self) -> int:
            return len(self.samples)

        def filename(self, i: int, basename: bool = False, absolute: bool = False) -> str:
            return self.samples[i][0]

        def filenames(self, basename: bool = False, absolute: bool = False) -> list[str]:
            return files

    dataset = ImageDataset("", reader=ListReader())
    loader = create_loader(dataset, input_size=cfg["input_size"], batch_size=bs,
                           use_prefetcher=False, interpolation=cfg["interpolation"],
                           mean=cfg["mean"], std=cfg["std"], num_workers=workers,
                           crop_pct=cfg["crop_pct"], crop_mode=cfg.get("crop_mode", "center"))
    return _run(model, loader, files)


def _run(model: torch.nn.Module, loader, files: list[str]) -> dict:  # noqa: ANN001
    rows = []
    t0 = time.perf_counter()
    n = 0
    with torch.inference_mode():
        for x, _ in loader:
            p = model(x).softmax(1)
            vals, idx = p.topk(5)
            for j in range(x.shape[0]):
                rows.append({"path": files[n + j], "top": idx[j].tolist(),
                             "probs": vals[j].tolist()})
            n += x.shape[0]
    return {"images": n, "seconds": round(time.perf_counter() - t0, 3)}


if __name__ == "__main__":
    kind, csv_path, size, bs, workers = sys.argv[1:6]
    fn = {"pil": pil_loop, "timm": timm_loop}[kind]
    print(json.dumps(fn(_files(csv_path), int(size), int(bs), int(workers))))
