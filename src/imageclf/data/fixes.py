"""Fixes: decisions about single images of a data set (keep, relabel, exclude), kept in a
fixes.csv beside the data and applied where the data set is resolved, so that the image
files themselves are never moved, renamed or deleted.

fixes.csv has one row per decided image: `image,decision,label,given,decided`. `image` is
the image's key (`image_key`: its path under DATA, or a store's or table's reference); the
last row of an image wins."""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from imageclf.core.errors import ConfigError, DataError
from imageclf.core.fileio import write_csv
from imageclf.data import refs
from imageclf.data.items import Items

if TYPE_CHECKING:
    from imageclf.data.refs import ImageRef

log = logging.getLogger(__name__)
COLUMNS = ("image", "decision", "label", "given", "decided")
DECISIONS = ("keep", "relabel", "exclude")
LISTED_MISSING = 20  # rows naming images no longer in the data set, listed by name


@dataclass(frozen=True)
class Fix:
    """One decision about one image."""

    image: str  # image_key
    decision: str  # keep | relabel | exclude
    label: str = ""  # relabel: the new class (several, space-separated, when multi-label)
    given: str = ""  # the label the image had when it was decided (for people reading it)
    decided: str = ""  # when (ISO 8601)

    def row(self) -> list[str]:
        return [self.image, self.decision, self.label, self.given, self.decided]


@dataclass(frozen=True)
class FixesApplied:
    """What a fixes file did to a data set."""

    file: str
    relabelled: int = 0
    excluded: int = 0
    kept: int = 0
    missing: tuple[str, ...] = field(default_factory=tuple)  # rows' images not in the data

    def sentence(self) -> str:
        """One line for people: '--fixes F: 12 relabelled, 3 excluded, 40 kept as given'."""
        gone = (f"; {len(self.missing)} named image(s) are not in the data set (e.g. "
                f"{', '.join(self.missing[:3])})") if self.missing else ""
        return (f"--fixes {self.file}: {self.relabelled} relabelled, {self.excluded} "
                f"excluded, {self.kept} kept as given{gone}")


def image_key(ref: ImageRef, root: Path) -> str:
    """What names an image in an audit's tables and in fixes.csv: a file's path under the
    data set's folder (POSIX), else its absolute path; a store's or a table's reference
    with its file named the same way."""
    if isinstance(ref, Path):
        for a, b in ((ref, root), (ref.absolute(), root.absolute())):
            try:
                return a.relative_to(b).as_posix()
            except ValueError:
                continue
        return ref.absolute().as_posix()
    text, file = str(ref), str(refs.backing_file(ref))
    return image_key(Path(file), root) + text[len(file):] if text.startswith(file) else text


def key_root(data: str | Path) -> Path:
    """The folder image keys are relative to: DATA itself, or the folder of a DATA file."""
    p = Path(data)
    return p if p.is_dir() else p.parent


def keys_of(items: Items, root: Path) -> list[str]:
    """`image_key` of every item."""
    return [image_key(p, root) for p in items.paths]


def read_fixes(path: str | Path) -> list[Fix]:
    """The rows of a fixes file, each checked; a bad row is a DataError naming it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"--fixes {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"--fixes {path}: cannot be read ({e})") from e
    rows = [r for r in csv.reader(io.StringIO(text)) if r and any(c.strip() for c in r)]
    if not rows or [c.strip() for c in rows[0][:2]] != ["image", "decision"]:
        raise DataError(f"--fixes {path}: expected a CSV whose header starts with "
                        f"image,decision (the columns {','.join(COLUMNS)}), as imageclf review "
                        "writes it")
    fixes = []
    for n, r in enumerate(rows[1:], start=2):
        r = [c.strip() for c in r] + [""] * (len(COLUMNS) - len(r))
        fix = Fix(*r[:len(COLUMNS)])
        if fix.decision not in DECISIONS:
            raise DataError(f"--fixes {path}, row {n} ({fix.image}): decision must be one of "
                            f"{', '.join(DECISIONS)}; got {fix.decision!r}")
        if fix.decision == "relabel" and not fix.label:
            raise DataError(f"--fixes {path}, row {n} ({fix.image}): relabel needs the new "
                            "class in the label column")
        fixes.append(fix)
    return fixes


def latest(fixes: Iterable[Fix]) -> dict[str, Fix]:
    """The decision in force per image: the last row naming it."""
    return {f.image: f for f in fixes}


def apply_fixes(items: Items, path: str | Path, root: Path) -> tuple[Items, FixesApplied]:
    """`items` with the fixes file's decisions applied: relabelled images get their new
    label, excluded ones are left out. Rows naming images not in `items` are listed, not
    fatal; a file none of whose rows names an image of `items` is refused (it belongs to
    another data set), and so is a relabel to a class the data set does not have."""
    rows = read_fixes(path)
    decided = latest(rows)
    keys = keys_of(items, root)
    found = set(keys) & decided.keys()
    if decided and not found:
        raise DataError(f"--fixes {path}: none of its {len(decided)} image(s) is in "
                        f"{root} (e.g. {next(iter(decided))!r}); it was made for another data "
                        "set, or DATA moved since; audit this data set for its own fixes")
    index = {c: i for i, c in enumerate(items.classes)}
    line = {f.image: n for n, f in enumerate(rows, start=2)}
    labels = list(items.labels)
    keep, counts = [], {"relabel": 0, "exclude": 0, "keep": 0}
    for i, key in enumerate(keys):
        fix = decided.get(key)
        if fix is None:
            keep.append(i)
            continue
        counts[fix.decision] += 1
        if fix.decision == "exclude":
            continue
        if fix.decision == "relabel":
            names = fix.label.split()
            unknown = [n for n in names if n not in index]
            if unknown:
                raise DataError(f"--fixes {path}, row {line[key]} ({key}): {unknown[0]!r} is "
                                f"not a class of this data set ({', '.join(items.classes)})")
            if len(names) > 1 and not items.multi_label:
                raise DataError(f"--fixes {path}, row {line[key]} ({key}): several labels "
                                "for a single-label data set")
            labels[i] = tuple(sorted(index[n] for n in names))
        keep.append(i)
    fixed = dataclasses.replace(items, labels=tuple(labels)).subset(keep)
    missing = tuple(sorted(decided.keys() - found))
    applied = FixesApplied(str(path), counts["relabel"], counts["exclude"], counts["keep"],
                           missing[:LISTED_MISSING])
    if missing:
        log.warning("%s", applied.sentence())
    return fixed, applied


def write_fixes(path: str | Path, fixes: Sequence[Fix]) -> None:
    """fixes.csv, written whole and atomically (a crash leaves the old file or the new)."""
    write_csv(path, COLUMNS, (f.row() for f in fixes))


def write_labels(path: str | Path, items: Items, root: Path) -> None:
    """A CSV of `filename,label,is_valid` for `items` (what `--csv` reads): the corrected
    label table of `audit --apply`, with absolute file names. Multi-label rows hold their
    labels space-separated. A store's or a table's images have no file name to list."""
    if items.paths and not isinstance(items.paths[0], Path):
        raise ConfigError(f"{root}: its images are inside a store or a table, which a labels "
                          "CSV cannot name; train on it with --fixes instead")
    write_csv(path, ("filename", "label", "is_valid"),
              ((p.absolute().as_posix(), " ".join(items.classes[i] for i in labs),
                "true" if v else "false")
               for p, labs, v in zip(items.paths, items.labels, items.is_valid, strict=True)))
