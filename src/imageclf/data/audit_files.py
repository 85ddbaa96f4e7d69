"""An audit's files: AUDIT/issues.csv (and .parquet), one `Issue` per flagged image, and
AUDIT/summary.json, the `AuditSummary`; written by `imageclf audit` (jobs/audit.py), read by
`imageclf review` (serve/review.py) and the report."""

from __future__ import annotations

import csv
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imageclf.core.errors import ConfigError, DataError
from imageclf.core.fileio import atomic_write, write_csv, write_json
from imageclf.core.records import Record, Skipped
from imageclf.core.schema import doc

KINDS = ("label", "leak", "duplicate", "stray")
SUMMARY, ISSUES, FIXES = "summary.json", "issues.csv", "fixes.csv"


@dataclass(frozen=True)
class Issue(Record):
    """One row of issues.csv: an image and what may be wrong with it."""

    image: str = doc("the image: its path under DATA (or a store's reference), as fixes.csv "
                     "names it")
    kind: str = doc("label (the given label is likely wrong), leak (a training image that is "
                    "a copy of a validation image), duplicate (a copy of another image of its "
                    "split), stray (looks like no class)", expect="one of " + ", ".join(KINDS))
    score: float = doc("how strongly: 1 - the label's quality (label), the similarity "
                       "(leak, duplicate; 1: the same pixels), the Mahalanobis distance "
                       "(squared) of its colours and layout from the set's (stray); higher "
                       "is worse")
    given: str = doc("its label as given (labels space-separated when multi-label)")
    suggested: str = doc("label: the class the out-of-sample probabilities favour; else "
                         "empty")
    duplicate_of: str = doc("leak, duplicate: the image it copies; else empty")
    split: str = doc("train or valid")
    note: str = doc("the figures behind it, for people")


@dataclass(frozen=True)
class AuditSummary(Record):
    """summary.json: what an audit looked at, how, and what it found."""

    data: str = doc("the data set audited (absolute)")
    images: int = doc("labelled images audited (after fixes)")
    classes: tuple[str, ...] = doc("the classes, in order")
    multi_label: bool = doc("several or no labels per image (label issues are not looked for)")
    features: str = doc("where the out-of-sample probabilities came from")
    folds: int = doc("models trained, each judging the fold it did not see (0: one model, "
                     "and a cross-validated linear head on its features)")
    counts: dict[str, int] = doc("images flagged per kind")
    exact_duplicates: int = doc("pairs with the same pixels after presize")
    unreadable: list[Skipped] = doc("images that could not be read, with the reason")
    seconds: float = doc("wall time of the audit")
    created: str = doc("when (ISO 8601)")
    data_fingerprint: str = doc("sha256 of the sorted image keys: which data set this is")
    settings: dict[str, Any] = doc("the audit's settings (AuditSettings)")
    fixes: str | None = doc("the --fixes file applied before auditing", None)

    def sentence(self) -> str:
        """'41 likely mislabelled, 12 duplicated across train and valid, ...'."""
        c = self.counts
        return (f"{c.get('label', 0)} likely mislabelled, {c.get('leak', 0)} duplicated "
                f"across train and valid, {c.get('duplicate', 0)} duplicated within a split, "
                f"{c.get('stray', 0)} belong to no class (of {self.images} images)")


# --- files --------------------------------------------------------------------------------
def write_audit(out: Path, summary: AuditSummary, issues: list[Issue]) -> None:
    """issues.csv (and issues.parquet where pyarrow is installed), then summary.json."""
    cols = [f.name for f in dataclasses.fields(Issue)]
    write_csv(out / ISSUES, cols, ([getattr(r, c) for c in cols] for r in issues))
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        (out / "issues.parquet").unlink(missing_ok=True)
    else:
        table = pa.table({c: [getattr(r, c) for r in issues] for c in cols},
                         schema=pa.schema([(c, pa.float64() if c == "score" else pa.string())
                                           for c in cols]))
        atomic_write(out / "issues.parquet", lambda p: pq.write_table(table, p))
    write_json(out / SUMMARY, summary.to_json())


def read_summary(folder: str | Path) -> AuditSummary:
    """AUDIT/summary.json."""
    p = Path(folder) / SUMMARY
    if not p.is_file():
        raise ConfigError(f"{folder} holds no audit ({SUMMARY} is missing); run imageclf audit "
                          f"DATA -o {folder} first")
    try:
        obj = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{p}: cannot be read ({e})") from e
    return AuditSummary.from_json(obj, str(p))


def read_issues(folder: str | Path) -> list[Issue]:
    """AUDIT/issues.csv's rows."""
    p = Path(folder) / ISSUES
    with open(p, newline="") as f:
        rows = list(csv.DictReader(f))
    return [Issue.from_json(r | {"score": float(r["score"])}, f"{p} row {n}")
            for n, r in enumerate(rows, start=2)]
