"""Clinical columns (numbers and categories, as read from a CSV) to a float32 matrix for the model."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from medtrain.errors import DataError

# Compared after stripping spaces and lower-casing (pandas' defaults but `none`, a category's name).
MISSING = ("", "na", "n/a", "#n/a", "<na>", "nan", "null")
# A column whose present training values are words in fewer than 1 of this many rows is one of
# numbers: its words are refused as typos instead of making the column categorical.
TYPO_RATE = 10


# The largest float32: a clinical value (or target) beyond it overflows where the network reads
# it (standardised values are float32).
FLOAT32_MAX = float(np.finfo(np.float32).max)


# A number written with its unit (`72 kg`, `5.5 %`) or a decimal comma (`1,5`): a measurement that
# float() does not read, which would otherwise make every value a category of its own.
WITH_UNIT = re.compile(r"^[+-]?\d+(?:[.,]\d+)?\s*(?P<unit>[^\d\s].*)$")
DECIMAL_COMMA = re.compile(r"^[+-]?\d+,\d+$")
# Units a number may carry; a one-letter one counts only after a space (`5 g`, `37 C`; not `2a`),
# in upper case only those no stage is named by (`4 S`, `2 A` are stages).
UNITS = {
    *("kg", "mg", "ug", "µg", "lb", "lbs", "cm", "mm", "ml", "dl", "mmhg", "bpm", "%", "yr", "yrs"),
    *("year", "years", "mo", "month", "months", "wk", "week", "weeks", "day", "days", "hr", "hrs"),
    *("hour", "hours", "min", "sec", "mmol/l", "mg/dl", "g/dl", "g/l", "u/l", "iu/l", "iu", "kpa"),
    *("°c", "°f", "kg/m2", "kg/m²", "ng/ml", "pg/ml", "µmol/l", "umol/l", "meq/l", "/min"),
}
ONE_LETTER_UNITS = set("gmldhsycfkCFKL")
MANY_CATEGORIES = 10  # a categorical column of more training values than this, one for every ...
CATEGORY_SHARE = 0.5  # ... row or two, is an identifier or a measurement, not categories


def with_unit(value: str) -> bool:
    """Whether a cell is a number with a unit (`72 kg`) or a decimal comma (`1,5`)."""
    value = value.strip()
    if DECIMAL_COMMA.match(value):
        return True
    found = WITH_UNIT.match(value)
    if found is None:
        return False
    written = found["unit"].strip()
    spaced = value[found.start("unit") - 1].isspace()
    return written.lower() in UNITS or (written in ONE_LETTER_UNITS and spaced)


def is_missing(value: str) -> bool:
    """Whether a raw cell counts as missing: empty, NA, N/A, NaN or null (any case)."""
    return value.strip().lower() in MISSING


def parse_number(value: str) -> float | None:
    """The cell as a float, or None when it is not a number."""
    try:
        return float(value)
    except ValueError:
        return None


def is_finite_number(value: str) -> bool:
    """Whether the cell is a finite number (0 is one)."""
    number = parse_number(value)
    return number is not None and math.isfinite(number)


@dataclass
class ColumnCode:
    """How one column is encoded: standardised number (with a missing indicator) or one-hot."""

    name: str
    numeric: bool
    mean: float = 0.0
    std: float = 1.0
    indicator: bool = False  # numeric only: adds `<name>_missing`
    # Numeric only: the smallest and largest training value (None in runs saved before them).
    low: float | None = None
    high: float | None = None
    categories: list[str] = field(default_factory=list)  # categorical only: sorted training values

    @property
    def names(self) -> list[str]:
        if self.numeric:
            return [self.name] + ([f"{self.name}_missing"] if self.indicator else [])
        return [f"{self.name}={c}" for c in self.categories]


class TabularEncoder:
    """Turn raw string columns into a float32 matrix, learning every statistic from training rows.

    A column whose present training values all parse as numbers is numeric: it is standardised with
    the training mean and standard deviation (a standard deviation of 0 is taken as 1). A missing cell
    (empty, NA, N/A, NaN or null, any case) is filled with the training mean, so it reads 0, and when a
    numeric column has a missing cell in any row an indicator column `<name>_missing` (1.0 where
    missing) follows it. Any other column is categorical and one-hot encoded over the categories of
    the training rows, sorted, as columns `<name>=<category>`; a category that no training row holds,
    and a missing category, give all zeros in that column's block.

    Args:
        source: what the columns come from (e.g. the CSV file), named in error messages.
        row_label: how error messages name row `i` of the columns (e.g. `line {i + 2}` for a CSV
            with a header); default `row {i}`.

    Attributes:
        names: the name of every output column, in order (set by `fit`).
    """

    def __init__(self, source: str = "tabular data", row_label: Callable[[int], str] | None = None):
        self.source = source
        self.row_label = row_label or (lambda i: f"row {i}")
        self.codes: list[ColumnCode] | None = None
        self.names: list[str] = []
        # {column: why it is worth a look}: a column of mostly numbers read as categories.
        self.warnings: dict[str, str] = {}

    def fit(self, columns: Mapping[str, Sequence[str]], rows: Sequence[int]) -> TabularEncoder:
        """Learn each column's encoding from the training rows.

        Args:
            columns: column name -> raw values, one per row of the table (every row, so that the
                missing indicators are the same whichever rows are transformed later).
            rows: indices of the training rows; only their values set means, deviations and
                categories.

        Returns:
            The encoder itself.
        """
        self._check_lengths(columns)
        self.codes = [self._fit_column(name, values, rows) for name, values in columns.items()]
        self.names = [name for code in self.codes for name in code.names]
        self._say_unseen(columns, rows)
        return self

    def _say_unseen(self, columns: Mapping[str, Sequence[str]], rows: Sequence[int]) -> None:
        """A warning per categorical column whose other rows (val, test) hold a category no
        training row holds: it is encoded as missing there, while `medtrain predict` and the
        service refuse it, so the run would be scored on inputs its deployment turns away (and
        a typo such as `f` for `F` would go unnoticed)."""
        training = set(rows)
        for code in self.codes or []:
            if code.numeric:
                continue
            known = set(code.categories)
            values = columns[code.name]
            unseen = [
                i
                for i in range(len(values))
                if i not in training
                and not is_missing(values[i])
                and values[i].strip() not in known
            ]
            if not unseen:
                continue
            self.warnings[f"{code.name}:unseen"] = (
                f"{self.source}: column {code.name!r} holds categories that no training row holds "
                f"in {len(unseen)} other row(s) ({self._cells(unseen, values, 5)}; training: "
                f"{', '.join(code.categories)}): they are encoded as missing, while medtrain "
                "predict and the service refuse them; correct a misspelt category, or leave the "
                "cell empty (or NA) for a missing value"
            )

    def state(self) -> list[dict]:
        """What `from_state` rebuilds the fitted encoder from (saved in a run's checkpoint, so
        that a new patient's clinical values are encoded as the training rows were)."""
        if self.codes is None:
            raise RuntimeError("TabularEncoder.state called before fit")
        return [asdict(code) for code in self.codes]

    @classmethod
    def from_state(
        cls, state: Sequence[Mapping], source: str = "tabular data", row_label=None
    ) -> TabularEncoder:
        """The encoder `state()` describes, fitted as it was."""
        encoder = cls(source, row_label)
        encoder.codes = [ColumnCode(**dict(code)) for code in state]
        encoder.names = [name for code in encoder.codes for name in code.names]
        return encoder

    @property
    def columns(self) -> list[str]:
        """The raw columns it encodes, in order."""
        return [code.name for code in self.codes or []]

    def transform(
        self, columns: Mapping[str, Sequence[str]], rows: Sequence[int] | None = None
    ) -> np.ndarray:
        """Encode the given rows (all rows by default) as a float32 matrix (rows x `len(names)`).

        Raises:
            DataError: a numeric column holds a value that is not a finite number.
        """
        if self.codes is None:
            raise RuntimeError("TabularEncoder.transform called before fit")
        length = self._check_lengths(columns)
        rows = range(length) if rows is None else list(rows)
        blocks, problems = [], []
        for code in self.codes:
            if code.name not in columns:
                raise DataError(f"{self.source}: no column {code.name!r} to encode")
            values = columns[code.name]
            encode = self._encode_numeric if code.numeric else self._encode_categorical
            try:
                blocks.append(encode(code, [values[i] for i in rows], rows))
            except DataError as err:  # every column's bad cells, then one error
                problems.append(str(err))
        if problems:
            raise DataError("\n".join(problems))
        if not blocks:
            return np.zeros((len(rows), 0), dtype=np.float32)
        return np.concatenate(blocks, axis=1).astype(np.float32)

    def _check_lengths(self, columns: Mapping[str, Sequence[str]]) -> int:
        lengths = {name: len(values) for name, values in columns.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"columns of different lengths: {lengths}")
        return next(iter(lengths.values()), 0)

    def _fit_column(self, name: str, values: Sequence[str], rows: Sequence[int]) -> ColumnCode:
        present = [values[i].strip() for i in rows if not is_missing(values[i])]
        if not present:
            raise DataError(
                f"{self.source}: column {name!r} is empty in all {len(rows)} training rows; "
                "nothing can be learnt from it (leave it out of the tabular columns)"
            )
        numbers = [parse_number(v) for v in present]
        present_rows = [i for i in rows if not is_missing(values[i])]  # in the order of `present`
        words = [i for i, x in zip(present_rows, numbers, strict=True) if x is None]
        if words and len(words) * TYPO_RATE < len(present):
            # A typo in a column of numbers would otherwise make every number a category.
            raise DataError(
                f"{self.source}: column {name!r} holds numbers in {len(present) - len(words)} of "
                f"{len(present)} training rows, and not in {self._cells(words, values)}: write a "
                "number, or leave the cell empty (or NA) for a missing value (codes of "
                "categories: write each as a name, e.g. g1, g2)"
            )
        measured = [i for i in words if with_unit(values[i])]
        if measured and (len(words) - len(measured)) * TYPO_RATE < len(present):
            raise DataError(
                f"{self.source}: column {name!r} holds numbers written with a unit or a decimal "
                f"comma in {len(measured)} of {len(present)} training rows "
                f"({self._cells(measured, values)}): read as they are, each value would be a "
                "category of its own; write the number alone with a decimal point (72, 1.5; "
                "1500 for a thousands separator), the unit in the column's name (weight_kg)"
            )
        if words:
            categories = sorted(set(present))
            self._review_categories(name, present, categories)
            if len(words) * 2 < len(present):  # mostly numbers: read as categories, say so
                counts = Counter(values[i].strip() for i in words).most_common(3)
                self.warnings[name] = (
                    f"{self.source}: column {name!r} holds numbers in {len(present) - len(words)} "
                    f"of {len(present)} training rows and words in {len(words)} ("
                    + ", ".join(f"{word!r} x{n}" for word, n in counts)
                    + f"): it is read as categories, {len(categories)} one-hot columns, one per "
                    "distinct value (a number no training row holds encodes as none). If the "
                    "words mean a missing value, leave those cells empty (or NA): the column is "
                    "then read as numbers, with a missing-value indicator"
                )
            return ColumnCode(name, numeric=False, categories=categories)
        for i in rows:  # a training value such as `inf` would poison the mean
            self._number(name, values[i], i)
        numbers = np.array(numbers, dtype=np.float64)
        std = float(numbers.std())
        if std == 0:
            self._say_constant(name, present[0], len(present))
        return ColumnCode(
            name,
            numeric=True,
            mean=float(numbers.mean()),
            std=std if std > 0 else 1.0,
            indicator=any(is_missing(v) for v in values),
            low=float(numbers.min()),
            high=float(numbers.max()),
        )

    def _cells(self, rows: list[int], values: Sequence[str], shown: int = 3) -> str:
        """`line 3: '1.2x'; ...` for the first `shown` of `rows`, then `and N more`."""
        text = "; ".join(f"{self.row_label(i)}: {values[i]!r}" for i in rows[:shown])
        return text + (f"; and {len(rows) - shown} more" if len(rows) > shown else "")

    def _review_categories(self, name: str, present: list[str], categories: list[str]) -> None:
        """Warnings about a categorical column's training values: one value in every row;
        categories that differ only in case (`f`, `F`: one category, misspelt); more than
        `MANY_CATEGORIES`, most of them distinct (an identifier such as a patient id, or a
        measurement: one-hot columns of a row or two each, which the model memorises)."""
        if len(categories) == 1:
            self._say_constant(name, categories[0], len(present))
        cased: dict[str, list[str]] = {}
        for category in categories:
            cased.setdefault(category.lower(), []).append(category)
        alike = [names for names in cased.values() if len(names) > 1]
        if alike:
            counts = Counter(present)
            shown = "; ".join(
                ", ".join(f"{c!r} x{counts[c]}" for c in names) for names in alike[:3]
            )
            self.warnings[f"{name}:case"] = (
                f"{self.source}: column {name!r} holds categories that differ only in case "
                f"({shown}): each is a one-hot column of its own; write each category one way"
            )
        if len(categories) > MANY_CATEGORIES and len(categories) >= CATEGORY_SHARE * len(present):
            self.warnings[f"{name}:many"] = (
                f"{self.source}: column {name!r} holds {len(categories)} distinct values in "
                f"{len(present)} training rows (e.g. {', '.join(map(repr, categories[:3]))}): "
                "read as categories, one one-hot column each, which the model can only memorise; "
                "an identifier (a patient id: dataset.group_column, not an input) or a "
                "measurement written as text?"
            )

    def _say_constant(self, name: str, value: str, rows: int) -> None:
        """A warning for a column of one value in every training row: it carries nothing."""
        self.warnings[f"{name}:constant"] = (
            f"{self.source}: column {name!r} holds {value!r} in all {rows} training rows (missing "
            "cells aside): it tells the model nothing; leave it out of dataset.tabular_columns"
        )

    def _number(self, name: str, value: str, row: int) -> float | None:
        """A numeric column's cell as a float (None when missing), or a DataError naming it."""
        if is_missing(value):
            return None
        number = parse_number(value)
        if number is not None and math.isfinite(number) and abs(number) > FLOAT32_MAX:
            raise DataError(
                f"{self.source}: {self.row_label(row)}: column {name!r} holds {value!r}, beyond "
                "the float32 range (+-3.4e38) the network computes in (standardised, it "
                "overflowed); correct it, or leave the cell empty (or NA) for a missing value"
            )
        if number is None or not math.isfinite(number):
            raise DataError(
                f"{self.source}: {self.row_label(row)}: column {name!r} holds {value!r}, but its "
                "training values are numbers; write a number, or leave the cell empty (or NA) for "
                "a missing value"
            )
        return number

    def _encode_numeric(self, code: ColumnCode, values: list[str], rows: Sequence[int]):
        numbers, bad, huge = [], [], []
        for value, row in zip(values, rows, strict=True):
            try:
                numbers.append(self._number(code.name, value, row))
            except DataError:
                number = parse_number(value)
                out = huge if number is not None and math.isfinite(number) else bad
                out.append(f"{self.row_label(row)}: {value!r}")
        said = []  # both kinds, one line each (the words alone were named, the huge unsaid)
        for cells, what in (
            (bad, "that are not numbers, but its training values are numbers"),
            (huge, "beyond the float32 range (+-3.4e38) the network computes in"),
        ):
            if cells:
                shown = "; ".join(cells[:10]) + (
                    f"; and {len(cells) - 10} more" if len(cells) > 10 else ""
                )
                said.append(
                    f"{self.source}: column {code.name!r} holds {len(cells)} value(s) {what}: "
                    f"{shown}; write a number, or leave the cell empty (or NA) for a missing value"
                )
        if said:
            raise DataError("\n".join(said))
        missing = np.array([x is None for x in numbers], dtype=bool)
        filled = np.array([code.mean if x is None else x for x in numbers], dtype=np.float64)
        block = [(filled - code.mean) / code.std]
        if code.indicator:
            block.append(missing.astype(np.float64))
        return np.stack(block, axis=1)

    def _encode_categorical(self, code: ColumnCode, values: list[str], rows: Sequence[int]):
        index = {category: k for k, category in enumerate(code.categories)}
        block = np.zeros((len(values), len(code.categories)), dtype=np.float64)
        for r, value in enumerate(values):
            k = index.get(value.strip())  # missing or unseen in training: the block stays zero
            if k is not None:
                block[r, k] = 1.0
        return block


def encode_tabular(
    columns: Mapping[str, Sequence[str]],
    train_rows: Sequence[int],
    source: str = "tabular data",
    row_label: Callable[[int], str] | None = None,
    warn: Callable[[str, str], None] | None = None,
) -> tuple[np.ndarray, list[str]]:
    """Every row encoded by `fit_tabular`'s encoder (the same arguments): the float32 matrix
    (rows x features) and the name of each feature."""
    encoder = fit_tabular(columns, train_rows, source, row_label, warn)
    return encoder.transform(columns), encoder.names


def fit_tabular(
    columns: Mapping[str, Sequence[str]],
    train_rows: Sequence[int],
    source: str = "tabular data",
    row_label: Callable[[int], str] | None = None,
    warn: Callable[[str, str], None] | None = None,
) -> TabularEncoder:
    """A `TabularEncoder` fitted on the training rows.

    Args:
        columns: column name -> raw string values, one per row.
        train_rows: indices of the training rows.
        source: named in error messages.
        row_label: how error messages name row `i` (see `TabularEncoder`).
        warn: called with (column, message) for each of the encoder's `warnings`.
    """
    encoder = TabularEncoder(source, row_label).fit(columns, train_rows)
    for column, message in encoder.warnings.items():
        if warn is not None:
            warn(column, message)
    return encoder


def union_encoding(states: Sequence[Sequence[Mapping]]) -> list[dict]:
    """One encoding from which each of `states` (encoders fitted on other rows, e.g. a CV's
    folds) is a linear map (`member_map`): per column, the first state's mean and standard
    deviation, a missing indicator where any has one or their means differ, and every category
    any holds.

    Raises:
        ValueError: states of other columns, or a column of numbers in one and categories in
            another.
    """
    columns = [[code["name"] for code in state] for state in states]
    if any(names != columns[0] for names in columns[1:]):
        raise ValueError(f"the encodings hold other columns: {columns}")
    union = []
    for codes in zip(*states, strict=True):
        first = dict(codes[0])
        if any(bool(code["numeric"]) != bool(first["numeric"]) for code in codes):
            raise ValueError(
                f"column {first['name']!r} is read as numbers by one encoding and as categories "
                "by another"
            )
        if first["numeric"]:  # an indicator also where the means differ: a missing value is
            # each member's own mean (0), which the map reaches only through the indicator
            differ = any(code["mean"] != first["mean"] for code in codes)
            first["indicator"] = differ or any(code["indicator"] for code in codes)
            lows, highs = [c.get("low") for c in codes], [c.get("high") for c in codes]
            if None in lows or None in highs:  # a member saved before ranges: none for all
                first.pop("low", None), first.pop("high", None)
            else:
                first["low"], first["high"] = min(lows), max(highs)
        else:
            first["categories"] = sorted({c for code in codes for c in code["categories"]})
        union.append(first)
    return union


def member_map(
    union: Sequence[Mapping], member: Sequence[Mapping]
) -> tuple[np.ndarray, np.ndarray]:
    """(weight, bias) with `member encoding = union encoding @ weight.T + bias` for every row:
    a standardised number rescaled to the member's mean and standard deviation (a missing one,
    0 with its indicator set, stays the member's 0), a category moved to the member's column
    (one the member never saw: all zeros, as its own encoder gives)."""
    union_codes = [ColumnCode(**dict(code)) for code in union]
    member_codes = [ColumnCode(**dict(code)) for code in member]
    width_in = sum(len(code.names) for code in union_codes)
    width_out = sum(len(code.names) for code in member_codes)
    weight = np.zeros((width_out, width_in), dtype=np.float64)
    bias = np.zeros(width_out, dtype=np.float64)
    row = col = 0
    for u, m in zip(union_codes, member_codes, strict=True):
        if u.numeric:  # m = (raw - mean_m) / std_m with raw = u * std_u + mean_u
            shift = (u.mean - m.mean) / m.std
            weight[row, col] = u.std / m.std
            bias[row] = shift
            if u.indicator:  # missing: u reads 0 and the indicator 1; the member reads 0
                weight[row, col + 1] = -shift
                if m.indicator:
                    weight[row + 1, col + 1] = 1.0
        else:
            index = {c: k for k, c in enumerate(u.categories)}
            for k, category in enumerate(m.categories):
                weight[row + k, col + index[category]] = 1.0
        row, col = row + len(m.names), col + len(u.names)
    return weight, bias
