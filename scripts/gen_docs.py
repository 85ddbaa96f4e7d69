"""Rewrite the generated tables in docs/ from the declarations they describe.

    .venv/bin/python scripts/gen_docs.py

Each table sits between `<!-- generated: NAME -->` and `<!-- end -->`; the tests check that
the docs hold exactly what these functions produce."""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def tables() -> dict[tuple[str, str], str]:
    """(doc file, block name) -> generated text."""
    from imageclf.core.commands import (
        AuditSettings,
        BatchOptions,
        CalibrateSettings,
        PackSettings,
        PredictOptions,
        ServeConfig,
    )
    from imageclf.core.config import DataConfig, TrainConfig
    from imageclf.core.modelmeta import CalibrationInfo, ModelMeta, NegativesInfo, OpenSetRule
    from imageclf.core.schema import record_markdown
    from imageclf.core.settings import settings_markdown
    from imageclf.data.audit_files import AuditSummary, Issue
    from imageclf.data.cache import CacheIndex
    from imageclf.data.store import StoreManifest
    from imageclf.jobs.batch_predict import BatchManifest, columns_markdown
    from imageclf.learn.checkpoint import CheckpointInfo
    from imageclf.learn.lr_find import LRFindResult
    from imageclf.model.interpret import InterpretationRecord
    from imageclf.run.rundir import RunClaim, RunMetrics

    out = {("settings.md", "settings"): settings_markdown(
        DataConfig, TrainConfig, PackSettings, PredictOptions, BatchOptions, CalibrateSettings,
        AuditSettings, ServeConfig),
           ("data-health.md", "issues"): record_markdown(Issue),
           ("data-health.md", "summary"): record_markdown(AuditSummary),
           ("run-directory.md", "metrics"): record_markdown(RunMetrics),
           ("run-directory.md", "claim"): record_markdown(RunClaim)
           + "\n" + record_markdown(LRFindResult),
           ("run-directory.md", "cache"): record_markdown(CacheIndex),
           ("data-at-scale.md", "store"): record_markdown(StoreManifest),
           ("batch-predict.md", "columns"): columns_markdown(),
           ("batch-predict.md", "manifest"): record_markdown(BatchManifest),
           ("run-directory.md", "checkpoint"): record_markdown(CheckpointInfo),
           ("run-directory.md", "interpretation"): record_markdown(InterpretationRecord),
           ("run-directory.md", "model"): record_markdown(ModelMeta, nested=False),
           ("run-directory.md", "open_set"): record_markdown(OpenSetRule)
           + "\n" + record_markdown(CalibrationInfo)
           + "\n" + record_markdown(NegativesInfo)}
    return out


def main() -> int:
    for (doc, name), text in tables().items():
        path = ROOT / "docs" / doc
        src = path.read_text()
        block = re.compile(rf"(<!-- generated: {re.escape(name)} -->\n).*?(<!-- end -->)", re.S)
        if not block.search(src):
            print(f"{path}: no block <!-- generated: {name} -->", file=sys.stderr)
            return 1
        path.write_text(block.sub(lambda m, t=text: m.group(1) + t + m.group(2), src))
    return 0


if __name__ == "__main__":
    sys.exit(main())
