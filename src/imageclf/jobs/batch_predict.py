"""Batch prediction: a model over a whole source, into Parquet (`imageclf predict MODEL
SOURCE -o OUT`; docs/batch-predict.md).

- The source is listed lazily (data/listing.py) and cut into chunks of `chunk` images in
  its fixed order; chunk k is written to `part-{k:06d}.parquet`, whole or not at all
  (a temporary name, then a rename).
- Under torchrun, rank r of W predicts the chunks k with k mod W = r: every image is
  predicted once, by one process, across nodes.
- A rerun of the same job into the same folder skips the parts already there. The job
  (`_job.json`: model hash, source fingerprint, settings) is written first; a rerun with
  another model, source or settings is refused with the reason.
- `_manifest.json`, written last, says the output is complete.
- Decoding runs in threads (torch single-threaded there) one batch ahead of the forward
  pass, which has the process's torch threads to itself.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from imageclf.core.commands import BatchOptions, PredictOptions
from imageclf.core.distributed import Dist
from imageclf.core.errors import ConfigError, DataError
from imageclf.core.fileio import atomic_write, write_json
from imageclf.core.hardware import decoding_pool
from imageclf.core.records import Record, Skipped
from imageclf.core.schema import doc
from imageclf.data.listing import Listing
from imageclf.data.urlio import is_url
from imageclf.model.predict import Predictor

JOB, MANIFEST = "_job.json", "_manifest.json"
LISTED_UNREADABLE = 1000  # unreadable files named in the manifest (every one has its row)

# the columns of every part: (name, meaning); their Arrow types are in `arrow_schema`
COLUMNS = {
    "path": "the image: a file's path, a store's SHARD::store::OFFSET::SIZE, a table's "
            "FILE::table::COLUMN::ROW",
    "decision": "the answer: a class, several joined by ';' (multi-label), or none (no "
                "class fits: the model's none-of-these rule); null when unreadable",
    "top_labels": "the k most likely classes, most likely first",
    "top_probs": "their probabilities (softmax; sigmoid per class for multi-label)",
    "none_score": "the value the none-of-these rule compared with its threshold (null "
                  "when the model has no rule)",
    "error": "why the image could not be read; null when it was predicted",
    "embedding": "with --embeddings: the pooled features (the body's output before the "
                 "head), float32",
}


def arrow_schema(embeddings: bool):  # noqa: ANN201 - pyarrow is imported here only
    import pyarrow as pa

    cols = [("path", pa.string()), ("decision", pa.string()),
            ("top_labels", pa.list_(pa.string())), ("top_probs", pa.list_(pa.float32())),
            ("none_score", pa.float32()), ("error", pa.string())]
    if embeddings:
        cols.append(("embedding", pa.list_(pa.float32())))
    return pa.schema(cols)


def columns_markdown() -> str:
    """The parts' columns as a Markdown table (docs/batch-predict.md)."""
    schema = arrow_schema(True)
    rows = [f"| `{n}` | {schema.field(n).type} | {COLUMNS[n]} |" for n in schema.names]
    return "\n".join(["| column | Arrow type | meaning |", "|---|---|---|", *rows]) + "\n"


@dataclass(frozen=True)
class BatchJob(Record):
    """_job.json: what a batch prediction into this folder runs. A rerun continues it only
    when every field is the same."""

    model: str = doc("the model folder")
    model_hash: str = doc("sha256 of its model.json and weights (first 32 hex digits)")
    source: str = doc("the source listed: a folder, CSV, store or Parquet files")
    source_fingerprint: str = doc("hash of every image's reference, size and mtime (a "
                                  "store: its manifest's fingerprint)")
    images: int = doc("images listed")
    chunk: int = doc("images a part")
    top_k: int = doc("labels per row")
    size: int = doc("the side images are predicted at")
    tta: bool = doc("flipped/zoomed views averaged")
    embeddings: bool = doc("rows carry the pooled features")
    decode: str = doc("where JPEGs were decoded: cpu, or device", "cpu")


@dataclass(frozen=True)
class BatchManifest(Record):
    """_manifest.json, written last: the output is complete."""

    job: BatchJob = doc("the job")
    parts: list[str] = doc("the Parquet files, in the source's order")
    predicted: int = doc("rows with a decision")
    unreadable: int = doc("rows with an error")
    unreadable_files: list[Skipped] = doc(f"the first {LISTED_UNREADABLE} unreadable images, "
                                          "with the reason")
    world_size: int = doc("processes of the run that finished the job")
    seconds: float = doc("wall of the run that finished it (a resumed job: that run's)")


@dataclass(frozen=True)
class _Plan:
    """How the forward passes run: PredictOptions, BatchOptions and --top-k together."""

    bs: int
    top_k: int
    tta: bool
    embeddings: bool
    decoders: int  # 0: the predictor's
    decode: str = "cpu"  # or device


@dataclass
class BatchProgress:
    """What this process has done: images (its share), and of those, unreadable."""

    total: int
    done: int = 0
    skipped_parts: int = 0
    t0: float = field(default_factory=time.perf_counter)

    def rate(self) -> float:
        return self.done / max(time.perf_counter() - self.t0, 1e-9)


def part_name(k: int) -> str:
    return f"part-{k:06d}.parquet"


def model_hash(folder: Path, weights: str) -> str:
    """sha256 of model.json and the weights file it names (`weights`: ModelMeta.weights)."""
    h = hashlib.sha256()
    for f in (folder / "model.json", folder / weights):
        with open(f, "rb") as fh:
            while block := fh.read(1 << 20):
                h.update(block)
    return h.hexdigest()[:32]


def _claim(out: Path, job: BatchJob) -> None:
    """Start the job in `out`, or check that the job there is this one."""
    out.mkdir(parents=True, exist_ok=True)
    have = out / JOB
    if have.is_file():
        old = BatchJob.from_json(json.loads(have.read_text()), str(have))
        diff = [f"{k}: {getattr(old, k)!r} then, {getattr(job, k)!r} now"
                for k in BatchJob.__dataclass_fields__
                if k != "model" and getattr(old, k) != getattr(job, k)]  # by its hash
        if diff:
            what = "the model" if diff[0].startswith("model") else (
                "the source" if diff[0].startswith(("source", "images")) else "the settings")
            raise ConfigError(f"{out} holds another job's output ({what} changed: "
                              f"{'; '.join(diff)}). Predict into a new folder (-o), or "
                              "remove this one to start again")
    else:
        write_json(have, job.to_json())
    for tmp in out.glob("*.tmp"):  # parts a killed run was writing
        tmp.unlink(missing_ok=True)


def _batches(pred: Predictor, pool, paths: list[str], bs: int,  # noqa: ANN001 - Executor
             device: bool = False
             ) -> Iterator[tuple[list[str], torch.Tensor | None, list[str | None]]]:
    """(paths, uint8 batch of the readable ones, error per path), decoded one batch ahead
    of the caller's forward pass: image by image in the pool's threads, or (`device`) the
    whole batch in one task on the model's device."""
    ahead: deque = deque()
    starts = iter(range(0, len(paths), bs))

    def submit() -> None:
        s = next(starts, None)
        if s is not None:
            chunk = paths[s:s + bs]
            ahead.append((chunk, [pool.submit(pred.load_on_device, chunk)] if device else
                          [pool.submit(pred.load_or_reason, p) for p in chunk]))

    submit()
    while ahead:
        submit()
        chunk, futs = ahead.popleft()
        loaded = futs[0].result() if device else [f.result() for f in futs]
        good = [v for v in loaded if not isinstance(v, str)]
        yield chunk, (torch.stack(good) if good else None), [
            v if isinstance(v, str) else None for v in loaded]


def _rows(pred: Predictor, chunk: list[str], x: torch.Tensor | None, errors: list,
          s: _Plan, cols: dict[str, list]) -> None:
    """Append one batch's rows to the part's columns."""
    if x is not None:
        out = pred.outputs(x, s.tta, features=s.embeddings or pred.rule.needs_features)
        probs, scores = pred.verdict(out)
    j = 0
    for path, e in zip(chunk, errors, strict=True):
        cols["path"].append(path)
        if e is not None:
            for k, v in (("decision", None), ("top_labels", []), ("top_probs", []),
                         ("none_score", None), ("error", e), ("embedding", None)):
                cols[k].append(v)
            continue
        a = pred.answer(path, probs[j], None if scores is None else float(scores[j]),
                        s.top_k)
        cols["decision"].append(";".join(a.labels))
        cols["top_labels"].append([k for k, _ in a.top])
        cols["top_probs"].append([p for _, p in a.top])
        cols["none_score"].append(a.none_score)
        cols["error"].append(None)
        cols["embedding"].append(out.features[j].tolist() if s.embeddings else None)
        j += 1


def _write_part(path: Path, cols: dict[str, list], embeddings: bool) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = arrow_schema(embeddings)
    table = pa.table({n: cols[n] for n in schema.names}, schema=schema)
    atomic_write(path, lambda tmp: pq.write_table(table, tmp))


def run_chunks(pred: Predictor, listing: Listing, out: Path, job: BatchJob, s: _Plan,
               dist: Dist, progress: Callable[[BatchProgress], None] | None = None
               ) -> BatchProgress:
    """Predict this process's chunks that have no part yet."""
    mine = range(dist.rank, -(-job.images // job.chunk), dist.world_size)
    todo = {k for k in mine if not (out / part_name(k)).is_file()}
    state = BatchProgress(total=sum(min(job.chunk, job.images - k * job.chunk) for k in todo),
                          skipped_parts=len(mine) - len(todo))
    with decoding_pool(s.decoders or pred.threads) as pool:
        for k, paths in enumerate(listing.chunks(job.chunk)):
            if k not in todo:
                continue
            cols: dict[str, list] = {n: [] for n in COLUMNS}
            for chunk, x, errors in _batches(pred, pool, paths, s.bs, s.decode == "device"):
                _rows(pred, chunk, x, errors, s, cols)
                state.done += len(chunk)
                if progress is not None:
                    progress(state)
            _write_part(out / part_name(k), cols, s.embeddings)
    return state


def finish(out: Path, job: BatchJob, dist: Dist, seconds: float) -> BatchManifest:
    """The manifest, from the parts (every one must be there)."""
    import pyarrow.parquet as pq

    n_chunks = -(-job.images // job.chunk)
    parts = [part_name(k) for k in range(n_chunks)]
    missing = [p for p in parts if not (out / p).is_file()]
    if missing:
        raise DataError(f"{out}: {len(missing)} part(s) missing ({missing[0]}...); rerun the "
                        "same command to predict them")
    predicted, bad = 0, []
    for p in parts:
        t = pq.read_table(out / p, columns=["path", "error"])
        errors = t.column("error").to_pylist()
        predicted += sum(e is None for e in errors)
        if any(e is not None for e in errors):
            paths = t.column("path").to_pylist()
            bad += [Skipped(paths[i], e) for i, e in enumerate(errors) if e is not None]
    m = BatchManifest(job, parts, predicted, len(bad), bad[:LISTED_UNREADABLE],
                      dist.world_size, round(seconds, 2))
    write_json(out / MANIFEST, m.to_json())
    return m


def predict_batch(pred: Predictor, source: str | Path, out: str | Path, opts: PredictOptions,
                  batch: BatchOptions, top_k: int = 5, dist: Dist | None = None,
                  progress: Callable[[BatchProgress], None] | None = None
                  ) -> tuple[BatchManifest | None, BatchProgress]:
    """Predict every image of `source` into Parquet parts in `out` (this process's share
    under torchrun); rank 0 writes the manifest once every part is there. Returns (the
    manifest on rank 0, else None; what this process did)."""
    t0 = time.perf_counter()
    out, listing, dist = Path(out), Listing.of(source), dist or Dist()
    s = _Plan(opts.bs, top_k, opts.tta, batch.embeddings, batch.decoders, batch.decode)

    def start() -> BatchJob:
        fp, n = listing.fingerprint()
        if n == 0:
            raise DataError(f"no images found in {source}")
        job = BatchJob(str(pred.folder.absolute()), model_hash(pred.folder, pred.meta.weights),
                       str(source) if is_url(source) else str(Path(source).absolute()), fp, n,
                       batch.chunk, top_k, pred.size,
                       s.tta, s.embeddings, s.decode)
        _claim(out, job)
        return job

    job = dist.decide(start)
    failed: BaseException | None = None
    try:
        state = run_chunks(pred, listing, out, job, s, dist, progress)
    except Exception as e:  # noqa: BLE001 - every rank hears of it (not a peer lost in gloo)
        failed = e
    if dist.any(failed is not None):  # a collective: the ranks meet here, then all stop
        if failed is not None:
            raise failed
        raise DataError(f"another process of this job stopped (its own error says why); "
                        f"the parts written in {out} are kept: rerun the same command")
    dist.barrier()
    if not dist.is_main:
        return None, state
    return finish(out, job, dist, time.perf_counter() - t0), state
