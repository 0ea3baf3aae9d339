"""Data check: scan a dataset once and report what it holds and everything wrong with it.

    python train.py --config configs/demo.yaml --check-data

Library code: :func:`check_dataset` takes the datasets of the splits that
could be built (``utils.builders.build_check_splits`` builds them from a
config) and the errors of those that could not; it reads them through the
``datasets.io.FileDataset`` protocol. Each image's size and mode come from
its file header (pixels are not decoded); each mask is decoded once, the way
the dataset decodes it, and counted with ``datasets.io.count_mask``. The
report (:func:`format_report`) gives per split the number of pairs and of
images without masks, the image size range, the image and mask modes, the
raw mask values with their pixel counts, the pixels of each class after the
mask mapping, and the classes that never occur.

Problems are collected, not raised, each with its file and the fix:
unreadable images or masks, mask sizes that differ from their image, mask
values outside the classes (with the same suggestion as training would give,
e.g. ``set data.mask_mapping: binary`` for 0/255 masks), RGB colour masks
under a value mapping, masks that are all ignore, and splits that cannot be
built (unpaired files, empty or missing split folders).

:func:`check_before_training` is the start-up check of train.py
(``data.check``): quick, cached per file, or the full report.
"""
import hashlib
import json
import logging
import os
import re
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from datasets.io import FileDataset, Sample, count_mask, non_finite_pixels
from utils.cli import guarded, setup_logging
from utils.constants import IGNORE_INDEX
from utils.errors import ConfigError, DataError, DiskError
from utils.fileio import write_json
from utils.mask_mapping import MaskMapping

log = logging.getLogger("datasets.check")

SPLITS = ("train", "val", "test")
#: Splits train.py builds; one the layout lacks is a problem, a missing test split is not.
TRAINING_SPLITS = ("train", "val")
#: Folder-name words that mark a split (root/val, leftImg8bit/val, ISIC2018_..._Validation_Input).
SPLIT_WORDS = {"train": {"train", "training"}, "val": {"val", "valid", "validation"}, "test": {"test", "testing"}}
#: Raw mask values listed in the report (most frequent first).
TOP_VALUES = 20
#: Files listed per kind of problem in the report (all are kept in ``CheckReport.problems``).
FILES_PER_PROBLEM = 5

_BITS = {"1": 1, "I": 32, "F": 32}
_UNREADABLE_FIX = "replace it with a valid image file, or remove it together with its image/mask"

RawValue = Union[int, str]  # a grey/index value, or "R,G,B" for a colour


@dataclass
class Problem:
    """One thing wrong with the data.

    ``fix`` is empty when ``message`` comes from the dataset class and already
    says what to change (errors while building a split).
    """

    file: str
    message: str
    fix: str = ""
    kind: str = "other"
    split: str = ""


@dataclass
class SplitStats:
    """Figures of one split (or of several, summed), counted over its samples."""

    num_classes: int
    mask_mapping: str = ""
    num_images: int = 0
    num_without_mask: int = 0
    num_all_ignore: int = 0
    sizes: Counter = field(default_factory=Counter)  # (width, height) -> images
    image_modes: Counter = field(default_factory=Counter)  # "RGB (8-bit)" -> images
    mask_modes: Counter = field(default_factory=Counter)
    raw_values: Counter = field(default_factory=Counter)  # raw mask value -> pixels, before mapping
    class_pixels: np.ndarray = field(default=None)  # (num_classes,) int64, after mapping
    ignore_pixels: int = 0

    def __post_init__(self) -> None:
        if self.class_pixels is None:
            self.class_pixels = np.zeros(self.num_classes, dtype=np.int64)

    @property
    def num_pairs(self) -> int:
        return self.num_images - self.num_without_mask

    @property
    def labelled_pixels(self) -> int:
        return int(self.class_pixels.sum())

    def missing_classes(self) -> List[int]:
        """Classes with no pixel; empty when the split has no labelled pixel at all."""
        if self.labelled_pixels == 0:
            return []
        return [int(c) for c in np.flatnonzero(self.class_pixels == 0)]

    def add(self, other: "SplitStats") -> None:
        """Add the counts of ``other`` to these."""
        for name in ("num_images", "num_without_mask", "num_all_ignore", "ignore_pixels"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for name in ("sizes", "image_modes", "mask_modes", "raw_values"):
            getattr(self, name).update(getattr(other, name))
        self.class_pixels += other.class_pixels


@dataclass
class CheckReport:
    """Everything the check found: per-split figures, absent splits and problems."""

    dataset: str
    root: str
    num_classes: int
    class_names: List[str]
    splits: Dict[str, SplitStats] = field(default_factory=dict)
    absent_splits: List[str] = field(default_factory=list)
    problems: List[Problem] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """0 when no problem was found, else 1."""
        return 1 if self.problems else 0

    def total(self) -> SplitStats:
        """The figures of every scanned split together."""
        total = SplitStats(self.num_classes)
        for stats in self.splits.values():
            total.add(stats)
        return total


# ------------------------------------------------------------------ scanning


def check_dataset(splits: Dict[str, FileDataset], failures: Dict[str, Exception], root: Union[str, Path],
                  dataset_name: str, num_classes: int, class_names: Sequence[str], progress: bool = True,
                  workers: Optional[int] = None) -> CheckReport:
    """Scan every dataset in ``splits``; never raises for bad data.

    Args:
        splits: split name -> dataset built without transforms (``FileDataset`` protocol).
        failures: split name -> the error building that split raised; sorted
            into splits the layout lacks and problems (see :func:`_record_failures`).
        root: the dataset folder, named in the report and searched for split folders.
        dataset_name: the dataset's registry name, for the report's heading.
        num_classes: classes, background included.
        class_names: one name per class, for the report.
        progress: show a tqdm bar per split.
        workers: threads reading files (default: up to 8, one per core).
    """
    if len(class_names) != num_classes:
        raise ValueError(f"class_names has {len(class_names)} names for {num_classes} classes")
    report = CheckReport(dataset=dataset_name, root=str(root), num_classes=num_classes, class_names=list(class_names))
    workers = workers or _default_workers()
    for split, dataset in splits.items():
        report.splits[split] = _scan_split(dataset, split, report.problems, progress, workers)
    _record_failures(report, failures, Path(root))
    return report


def check_before_training(splits: Dict[str, FileDataset], failures: Dict[str, Exception], mode: str,
                          cache_file: Optional[Path], report_hint: str, *, root: Union[str, Path],
                          dataset_name: str, num_classes: int, class_names: Sequence[str], progress: bool = True,
                          workers: Optional[int] = None) -> None:
    """The start-up data check of train.py (``data.check``); raises DataError naming the first problem.

    ``quick`` checks ``splits`` (train.py's train and val): the split could
    be built (else the error of the first of ``failures`` is raised as it
    is), readable images and masks, image/mask sizes, NaN/Inf pixels and mask
    values against the classes. A pair that passed is remembered in
    ``cache_file`` by its files' (path, size, mtime) and the mask settings, so
    the next start checks only new or changed files. ``full`` runs
    :func:`check_dataset` without the cache and logs its report; ``off``
    skips the check. ``report_hint`` names the command giving the full report
    (e.g. ``python train.py --config X --check-data``); the keyword arguments
    are those of :func:`check_dataset`.
    """
    if mode == "off":
        return
    if mode == "full":
        report = check_dataset(splits, failures, root, dataset_name, num_classes, class_names, progress, workers)
        log.info("data check (data.check: full):\n%s", format_report(report))
        _raise_first(report.problems, report_hint)
        return
    if failures:
        raise next(iter(failures.values()))
    passed = _read_cache(cache_file)
    problems: List[Problem] = []
    checked = 0
    for split, dataset in splits.items():
        samples = getattr(dataset, "samples", None)
        if samples is None:  # generated in memory: nothing on disk to check
            continue
        settings = f"{_CHECK_VERSION}|{split}|{getattr(dataset, 'mask_mapping', 'volume')!r}|{dataset.num_classes}"
        todo = [(sample, _signature(sample, settings)) for sample in samples]
        todo = [(sample, key) for sample, key in todo if key not in passed]
        checked += len(todo)
        for key, found in _scan_new(dataset, split, todo, progress, workers):
            problems.extend(found)
            if not found:
                passed.add(key)
    if checked:
        log.info("data check (quick): %d new or changed image(s) checked", checked)
        _write_cache(cache_file, passed)
    _raise_first(problems, report_hint)


def _scan_new(dataset: FileDataset, split: str, todo: List[Tuple[Sample, str]],
              progress: bool, workers: Optional[int]) -> Iterator[Tuple[str, List[Problem]]]:
    """(cache key, problems) of each pair in ``todo``, in order, read in ``workers`` threads."""

    positions = {tuple(sample): i for i, sample in enumerate(dataset.samples)}

    def scan(item: Tuple[Sample, str]) -> Tuple[str, List[Problem]]:
        (image, mask), key = item
        if getattr(dataset, "volumetric", False):  # volume cases are read whole, as training reads them
            return key, _scan_volume(dataset, positions[(image, mask)], split)[1]
        return key, _scan_sample(Path(image), None if mask is None else Path(mask), dataset.mask_mapping,
                                 dataset.num_classes, split)[1]

    with ThreadPoolExecutor(max_workers=workers or _default_workers()) as pool:
        yield from tqdm(pool.map(scan, todo), total=len(todo), desc=f"check {split}", unit="img", leave=False,
                        disable=not progress or not todo, mininterval=1.0)


def _default_workers() -> int:
    """Threads reading files: up to 8, one per core."""
    return min(8, os.cpu_count() or 1)


#: The quick check's memory of pairs that passed, in ``train.checkpoint_dir`` (shared by its runs).
DATA_CHECK_CACHE = ".data_check_cache.json"
#: Bump when the quick check starts looking for something new: every pair is checked again.
_CHECK_VERSION = 1


def _signature(sample: Tuple[Any, Any], settings: str) -> str:
    """A digest of the pair's files (path, size, mtime) and the check's settings."""
    parts = [settings]
    for path in sample:
        if path is None:
            parts.append("-")
            continue
        try:
            stat = os.stat(path)
            parts.append(f"{os.path.abspath(path)}|{stat.st_size}|{stat.st_mtime_ns}")
        except OSError:
            parts.append(f"{path}|missing")
    return hashlib.sha1("\n".join(parts).encode()).hexdigest()


def _read_cache(cache_file: Optional[Path]) -> set:
    if cache_file is None or not cache_file.is_file():
        return set()
    try:
        return set(json.loads(cache_file.read_text(encoding="utf-8")).get("passed", []))
    except (OSError, ValueError, AttributeError):
        log.warning("%s: unreadable data check cache, checking every file again", cache_file)
        return set()


def _write_cache(cache_file: Optional[Path], passed: set) -> None:
    if cache_file is None:
        return
    try:
        write_json(cache_file, {"version": _CHECK_VERSION, "passed": sorted(passed)})
    except DiskError as exc:  # the cache only saves time: training can go on without it
        log.warning("%s", exc)


def _raise_first(problems: List[Problem], report_hint: str) -> None:
    """Raise DataError for the first problem, counting the others and naming the full report's command."""
    if not problems:
        return
    first = problems[0]
    fix = f". {first.fix[:1].upper()}{first.fix[1:]}" if first.fix else ""
    where = f"[{first.split}] " if first.split else ""
    more = f" ({len(problems) - 1} more problem(s)" if len(problems) > 1 else " (no other problem"
    raise DataError(f"{where}{first.file}: {first.message}{fix}{more}; the full report: {report_hint}; "
                    "data.check: off skips this check)")


def _record_failures(report: CheckReport, failures: Dict[str, Exception], root: Path) -> None:
    """Sort the splits that could not be built into absent ones and problems.

    A split is absent when no folder is named for it and another split was
    built (a bad argument or root fails every split: that is a problem). An
    absent test split is fine; train.py needs train and val.
    """
    for split, exc in failures.items():
        if _has_split_folder(root, split) or (split in TRAINING_SPLITS and not report.splits):
            report.problems.append(Problem(str(root), f"the {split} split cannot be loaded: {exc}",
                                           kind="split cannot be loaded", split=split))
            continue
        report.absent_splits.append(split)
        log.info("no %s split in %s", split, root)
        if split in TRAINING_SPLITS:
            report.problems.append(Problem(
                str(root), f"the dataset has no {split} split: {exc}",
                f"train.py needs a train and a val split; add the {split} data in the layout the message names",
                kind="missing split", split=split))


def _has_split_folder(root: Path, split: str) -> bool:
    """Whether a folder named for ``split`` lies within two levels of ``root``.

    A dataset that fails to build although such a folder exists has a real
    problem (unpaired files, an empty or incomplete split); without one the
    layout simply lacks that split.
    """
    words = SPLIT_WORDS[split]
    level = [root] if root.is_dir() else []
    for _ in range(2):
        level = [p for folder in level for p in folder.iterdir() if p.is_dir()]
        if any(words & set(re.split(r"[^a-z0-9]+", p.name.lower())) for p in level):
            return True
    return False


def _scan_volume(dataset: Any, index: int, split: str) -> Tuple[SplitStats, List[Problem]]:
    """A volume case read as training reads it (the readers check shapes, labels and NaN voxels) and its
    voxels per class; a DataError becomes the case's problem."""
    stats = SplitStats(dataset.num_classes, num_images=1)
    try:
        _, mask = dataset.load_sample(index)
    except (OSError, ValueError) as exc:
        return stats, [Problem(str(dataset.samples[index][0]), str(exc), "", "case cannot be read", split)]
    if mask is None:
        stats.num_without_mask = 1
        return stats, []
    counts = torch.bincount(mask.flatten(), minlength=max(IGNORE_INDEX + 1, dataset.num_classes)).numpy()
    stats.class_pixels += counts[:dataset.num_classes]
    stats.ignore_pixels = int(counts[IGNORE_INDEX])
    return stats, []


def _scan_split(dataset: Any, split: str, problems: List[Problem], progress: bool, workers: int) -> SplitStats:
    """Read every sample of ``dataset`` once (in ``workers`` threads) and sum the figures."""
    stats = SplitStats(dataset.num_classes, mask_mapping=repr(getattr(dataset, "mask_mapping", "volume labels")))
    samples = list(dataset.samples)
    log.info("checking the %s split: %d images", split, len(samples))
    if not samples:
        problems.append(Problem(str(dataset.root), f"the {split} split has no images",
                                "add images (and masks) to this split", kind="empty split", split=split))
        return stats

    volumetric = getattr(dataset, "volumetric", False)  # volume cases are read whole, as training reads them

    def scan(index: int) -> Tuple[SplitStats, List[Problem]]:
        if volumetric:
            return _scan_volume(dataset, index, split)
        return _scan_sample(samples[index][0], samples[index][1], dataset.mask_mapping, dataset.num_classes, split)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = tqdm(pool.map(scan, range(len(samples))), total=len(samples), desc=f"check {split}", unit="img",
                       leave=False, disable=not progress, mininterval=1.0)
        for sample_stats, sample_problems in results:
            stats.add(sample_stats)
            problems.extend(sample_problems)
    return stats


def _scan_sample(image_path: Path, mask_path: Optional[Path], mapping: MaskMapping, num_classes: int,
                 split: str) -> Tuple[SplitStats, List[Problem]]:
    """Figures and problems of one (image, mask) pair; the image's pixels are not decoded."""
    stats = SplitStats(num_classes, num_images=1)
    problems: List[Problem] = []

    def problem(path: Path, message: str, fix: str, kind: str) -> None:
        problems.append(Problem(str(path), message, fix, kind, split))

    image_size = None
    try:
        image_size, mode = _header(image_path)
        stats.sizes[image_size] += 1
        stats.image_modes[_describe_mode(mode)] += 1
        _decode_image(image_path)
    except (OSError, ValueError, SyntaxError) as exc:
        problem(image_path, f"cannot read the image: {exc}", _UNREADABLE_FIX, "unreadable image")
    except _NonFinite as exc:
        problem(image_path, str(exc), "replace the NaN/Inf pixels (e.g. with 0) or remove the image",
                "NaN or Inf pixels")
    if mask_path is None:
        stats.num_without_mask = 1
        if split in TRAINING_SPLITS:
            problem(image_path, "has no mask", "add its mask, or remove the image", "image without mask")
        return stats, problems
    mask_size = _scan_mask(mask_path, mapping, num_classes, split, stats, problem)
    if image_size is not None and mask_size is not None and image_size != mask_size:
        problem(mask_path, f"size {mask_size[0]}x{mask_size[1]} differs from image {image_path.name} "
                f"{image_size[0]}x{image_size[1]}",
                "masks must match their image pixel for pixel: resize the mask to the image's size with "
                "nearest-neighbour interpolation, or pair the image with its right mask", "size mismatch")
    return stats, problems


def _scan_mask(path: Path, mapping: MaskMapping, num_classes: int, split: str, stats: SplitStats,
               problem: Callable[[Path, str, str, str], None]) -> Optional[Tuple[int, int]]:
    """Count the raw values and mapped classes of one mask into ``stats``; returns its (width, height)."""
    try:
        mode = _header(path)[1]
    except (OSError, ValueError, SyntaxError) as exc:
        problem(path, f"cannot read the mask: {exc}", _UNREADABLE_FIX, "unreadable mask")
        return None
    try:
        counts = count_mask(path, mapping, num_classes)
    except (OSError, ValueError) as exc:  # the message says what to change
        problem(path, _without_path(str(exc), path), "", "mask cannot be decoded")
        return None
    stats.mask_modes[_describe_mode(mode)] += 1
    stats.raw_values.update(dict(zip(_value_keys(counts.values), counts.value_pixels.tolist())))
    if counts.problem is not None:
        problem(path, _without_path(counts.problem.message, path), counts.problem.fix, counts.problem.kind)
        return counts.size
    stats.class_pixels += counts.class_pixels
    stats.ignore_pixels = counts.ignore_pixels
    if not counts.class_pixels.any():
        stats.num_all_ignore = 1
        if split in TRAINING_SPLITS:
            problem(path, f"every pixel maps to {IGNORE_INDEX} (ignore), so the image teaches nothing",
                    "label the image or remove the pair; if many masks do this, check data.mask_mapping",
                    "mask all ignore")
    return counts.size


class _NonFinite(Exception):
    """A float image holding NaN or Inf pixels."""


def _decode_image(path: Path) -> None:
    """Decode the image's pixels (JPEGs at 1/8 scale, which still reads every byte of the stream), so a
    truncated or corrupt file is found; raise :class:`_NonFinite` for NaN or Inf pixels in a float image."""
    with Image.open(path) as pil:
        if pil.format == "JPEG":
            pil.draft(pil.mode, (max(1, pil.size[0] // 8), max(1, pil.size[1] // 8)))
        pil.load()
        bad = non_finite_pixels(np.asarray(pil)) if pil.mode == "F" else 0
        if bad:
            raise _NonFinite(f"{bad} pixel(s) are NaN or infinite; they would make the loss NaN")


def _header(path: Path) -> Tuple[Tuple[int, int], str]:
    """(width, height) and PIL mode from the file header, without decoding the pixels."""
    with Image.open(path) as pil:
        return pil.size, pil.mode


def _describe_mode(mode: str) -> str:
    """A PIL mode with its bit depth per channel, e.g. "RGB (8-bit)", "I;16 (16-bit)"."""
    bits = 16 if mode.startswith("I;16") else _BITS.get(mode, 8)
    return f"{mode} ({bits}-bit)"


def _value_keys(values: np.ndarray) -> List[RawValue]:
    """Report keys of raw values: ints, or "R,G,B" strings for colours."""
    if values.ndim == 2:
        return [",".join(str(int(c)) for c in colour) for colour in values]
    return [int(v) for v in values]


def _without_path(message: str, path: Path) -> str:
    """``message`` without a leading "<path>: " (the report names the file already)."""
    prefix = f"{path}: "
    return message[len(prefix):] if message.startswith(prefix) else message


# ------------------------------------------------------------------ report


def format_report(report: CheckReport) -> str:
    """The report as readable text: figures per split, then the problems grouped by kind."""
    lines = [f"Data check: {report.dataset} dataset at {report.root} (num_classes={report.num_classes})"]
    mappings = sorted({s.mask_mapping for s in report.splits.values()})
    if mappings:
        lines.append(f"mask mapping: {', '.join(mappings)}")
    if report.absent_splits:
        lines.append(f"splits the layout lacks: {', '.join(report.absent_splits)}")
    if report.splits:
        total = report.total()
        lines += ["", *_split_table(report), ""]
        lines.append("image modes: " + _format_counter(total.image_modes, "images"))
        lines.append("mask modes:  " + _format_counter(total.mask_modes, "masks"))
        lines += ["", *_raw_value_lines(total), "", *_class_lines(report), "", *_missing_class_lines(report)]
        lines += [f"note: {note}" for note in _notes(report)]
    lines += ["", *_problem_lines(report.problems)]
    return "\n".join(lines)


def _split_table(report: CheckReport) -> List[str]:
    rows = [("split", "pairs", "no mask", "image sizes (W x H)")]
    for name, stats in [*report.splits.items(), ("all", report.total())]:
        rows.append((name, f"{stats.num_pairs:,}", f"{stats.num_without_mask:,}", _size_range(stats.sizes)))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return ["  ".join(cell.ljust(w) if i in (0, 3) else cell.rjust(w) for i, (cell, w) in
                      enumerate(zip(row, widths))).rstrip() for row in rows]


def _size_range(sizes: Counter) -> str:
    """"64x48" when every image has one size, else "min .. max (N sizes)" by width and height."""
    if not sizes:
        return "-"
    widths, heights = [w for w, _ in sizes], [h for _, h in sizes]
    if len(sizes) == 1:
        return f"{widths[0]}x{heights[0]}"
    return f"{min(widths)}x{min(heights)} .. {max(widths)}x{max(heights)} ({len(sizes)} sizes)"


def _format_counter(counter: Counter, unit: str) -> str:
    return ", ".join(f"{key}: {count:,} {unit}" for key, count in counter.most_common()) or "-"


def _raw_value_lines(total: SplitStats) -> List[str]:
    pixels = sum(total.raw_values.values())
    if not pixels:
        return ["raw mask values: no masks read"]
    lines = [f"raw mask values before mapping ({len(total.raw_values)} distinct), pixels:"]
    for value, count in total.raw_values.most_common(TOP_VALUES):
        lines.append(f"  {str(value):>11}  {count:>14,}  {100.0 * count / pixels:6.2f}%")
    if len(total.raw_values) > TOP_VALUES:
        lines.append(f"  ... and {len(total.raw_values) - TOP_VALUES} more values")
    return lines


def _class_lines(report: CheckReport) -> List[str]:
    """Pixels per class after mapping, with the share of labelled pixels, per split and overall."""
    columns = [*report.splits.items(), ("all", report.total())]
    labels = [f"{k} {name}" for k, name in enumerate(report.class_names)] + [f"{IGNORE_INDEX} ignore"]
    rows = [["class", *(name for name, _ in columns)]]
    for k, label in enumerate(labels):
        row = [label]
        for _, stats in columns:
            if k == report.num_classes:
                row.append(f"{stats.ignore_pixels:,}")
            else:
                count = int(stats.class_pixels[k])
                row.append(f"{count:,} ({_percent(count, stats.labelled_pixels)})")
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    table = ["  " + row[0].ljust(widths[0]) + "".join(cell.rjust(w + 3) for cell, w in zip(row[1:], widths[1:]))
             for row in rows]
    return ["pixels per class after mapping (% of labelled pixels):", *table]


def _percent(count: int, total: int) -> str:
    return f"{100.0 * count / total:.2f}%" if total else "-"


def _missing_class_lines(report: CheckReport) -> List[str]:
    """Classes that never occur, per split and overall."""
    lines = ["classes that never occur:"]
    for name, stats in [*report.splits.items(), ("all", report.total())]:
        if stats.labelled_pixels == 0:
            text = "no labelled pixels"
        else:
            text = ", ".join(f"{k} {report.class_names[k]}" for k in stats.missing_classes()) or "none"
        lines.append(f"  {name}: {text}")
    return lines


def _notes(report: CheckReport) -> List[str]:
    notes = []
    total = report.total()
    if total.labelled_pixels and total.missing_classes():
        notes.append("a class with no pixel in any split cannot be learned: check data.num_classes and "
                     "data.mask_mapping")
    test = report.splits.get("test")
    if test is not None and test.num_all_ignore:
        notes.append(f"{test.num_all_ignore} test mask(s) are all ignore (unlabelled): no metrics for them")
    return notes


def _problem_lines(problems: List[Problem]) -> List[str]:
    """Problems grouped by kind and fix, with up to ``FILES_PER_PROBLEM`` files each."""
    if not problems:
        return ["No problems found."]
    groups: Dict[Tuple[str, str], List[Problem]] = {}
    for item in problems:
        groups.setdefault((item.kind, item.fix), []).append(item)
    lines = [f"{len(problems)} problem(s) found:"]
    for (kind, fix), items in groups.items():
        lines.append(f"- {kind} ({len(items)} file(s)):")
        for item in items[:FILES_PER_PROBLEM]:
            where = f"[{item.split}] " if item.split else ""
            lines.append(f"    {where}{item.file}: {item.message}")
        if len(items) > FILES_PER_PROBLEM:
            lines.append(f"    ... and {len(items) - FILES_PER_PROBLEM} more")
        if fix:
            lines.append(f"  fix: {fix}")
    return lines


# ------------------------------------------------------------------ the old command line


def _moved() -> int:
    """``python -m datasets.check`` is gone: say what replaced it, rather than exit 0 having checked nothing."""
    raise ConfigError("python -m datasets.check was replaced by: python train.py --config CONFIG --check-data "
                      "(the same report and exit status)")


if __name__ == "__main__":
    setup_logging()
    sys.exit(guarded(_moved, log))
