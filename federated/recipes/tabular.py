"""Local-data mode: train on a CSV file the participant chose on their own disk.

The file never leaves the machine; only updates and aggregate metrics do. Every problem with
the file is reported with the file, line and column so the participant can fix it.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from federated.errors import DataError, RecipeError
from federated.recipes.base import Dataset, HParamValue, HyperParam, Recipe

MAX_CSV_BYTES = 2 * 1024**3
"""Refuse files above 2 GiB rather than exhaust a volunteer's memory."""


def feature_columns(hparams: Mapping[str, HParamValue]) -> list[str]:
    return [c.strip() for c in str(hparams["feature_columns"]).split(",") if c.strip()]


def csv_files(data_path: str | Path) -> list[Path]:
    """The CSV file, or every ``*.csv`` in the folder, in name order."""
    path = Path(data_path).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() == ".csv" and p.is_file())
        if not files:
            raise DataError(f"{path}: the folder holds no .csv files")
        return files
    if not path.is_file():
        raise DataError(f"{path}: no such file; choose a CSV file or a folder of CSV files")
    return [path]


def read_csv(
    path: Path, label_column: str, features: list[str], num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Parse one CSV into (features float32, labels int64), or raise DataError naming the spot."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise DataError(f"{path}: cannot read the file ({exc.strerror})") from None
    if size == 0:
        raise DataError(f"{path}: the file is empty; it needs a header line and data rows")
    if size > MAX_CSV_BYTES:
        raise DataError(f"{path}: the file is {size} bytes, above the {MAX_CSV_BYTES} byte limit")
    rows_x: list[list[float]] = []
    rows_y: list[int] = []
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None or not any(h.strip() for h in header):
                raise DataError(f"{path}: the file is empty; it needs a header line and data rows")
            names = [h.strip() for h in header]
            for column in [label_column, *features]:
                if column not in names:
                    raise DataError(
                        f"{path}, line 1: column {column!r} not found; the header has {', '.join(names)}"
                    )
            label_at = names.index(label_column)
            feature_at = [names.index(c) for c in features]
            for row in reader:
                line = reader.line_num
                if not row or all(not cell.strip() for cell in row):
                    continue
                if len(row) != len(names):
                    raise DataError(
                        f"{path}, line {line}: {len(row)} fields, but the header has {len(names)}"
                    )
                values = []
                for column, at in zip(features, feature_at, strict=True):
                    values.append(_number(path, line, column, row[at]))
                label = _number(path, line, label_column, row[label_at])
                if not label.is_integer() or not 0 <= label < num_classes:
                    raise DataError(
                        f"{path}, line {line}, column {label_column!r}: label {row[label_at].strip()!r} "
                        f"is not a class number in 0..{num_classes - 1}"
                    )
                rows_x.append(values)
                rows_y.append(int(label))
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except csv.Error as exc:
        raise DataError(f"{path}: malformed CSV ({exc})") from None
    if not rows_y:
        raise DataError(f"{path}: the header is there but there are no data rows")
    return np.asarray(rows_x, dtype=np.float32), np.asarray(rows_y, dtype=np.int64)


def _number(path: Path, line: int, column: str, cell: str) -> float:
    text = cell.strip()
    try:
        value = float(text)
    except ValueError:
        shown = text if text else "(empty)"
        raise DataError(
            f"{path}, line {line}, column {column!r}: {shown!r} is not a number"
        ) from None
    if not math.isfinite(value):
        raise DataError(f"{path}, line {line}, column {column!r}: {text!r} is not a finite number")
    return value


class TabularCSV(Recipe):
    name = "tabular-csv"
    description = "Your own table: classification on a CSV file that stays on your computer"
    data_mode = "local"
    extra_hparams: ClassVar[tuple[HyperParam, ...]] = (
        HyperParam("label_column", str, "label", "the column holding the class (0..num_classes-1)"),
        HyperParam("feature_columns", str, "", "comma-separated numeric feature columns"),
        HyperParam("num_classes", int, 2, "number of classes", low=2, high=10_000),
        HyperParam("hidden", int, 0, "hidden units (0: logistic regression)", low=0, high=4096),
    )

    @classmethod
    def resolve_hparams(cls, overrides: Mapping[str, Any] | None = None) -> dict[str, HParamValue]:
        resolved = super().resolve_hparams(overrides)
        features = feature_columns(resolved)
        if not features:
            raise RecipeError("hyperparameter 'feature_columns': name at least one feature column")
        if len(set(features)) != len(features):
            raise RecipeError("hyperparameter 'feature_columns': a column is named twice")
        if str(resolved["label_column"]).strip() in features:
            raise RecipeError("hyperparameter 'label_column': the label is also a feature column")
        return resolved

    def build_model(self, hparams: Mapping[str, HParamValue]) -> nn.Module:
        n_in, n_out, hidden = (
            len(feature_columns(hparams)),
            int(hparams["num_classes"]),
            int(hparams["hidden"]),
        )
        if hidden == 0:
            return nn.Sequential(nn.Linear(n_in, n_out))
        return nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, n_out))

    def load_shard(
        self, hparams: Mapping[str, HParamValue], shard_index: int, *, data_path: str | None = None
    ) -> Dataset:
        """Everything in the participant's file(s); the shard index does not apply locally."""
        if data_path is None:
            raise DataError("this project trains on your own data: choose a CSV file or folder")
        label, features = str(hparams["label_column"]).strip(), feature_columns(hparams)
        parts = [
            read_csv(p, label, features, int(hparams["num_classes"])) for p in csv_files(data_path)
        ]
        x = np.concatenate([p[0] for p in parts])
        y = np.concatenate([p[1] for p in parts])
        return Dataset(torch.from_numpy(x), torch.from_numpy(y))

    def load_test(self, hparams: Mapping[str, HParamValue]) -> None:
        return None

    def flops_per_example(self, hparams: Mapping[str, HParamValue]) -> float:
        n_in, n_out, hidden = (
            len(feature_columns(hparams)),
            int(hparams["num_classes"]),
            int(hparams["hidden"]),
        )
        forward = 2.0 * (n_in * n_out if hidden == 0 else n_in * hidden + hidden * n_out)
        return 3.0 * forward
