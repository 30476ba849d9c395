"""Check a Qlib daily data folder for what a Kronos run needs, so a bad folder stops a run with a readable
message at its start instead of a failure deep inside Qlib (or a silently weaker backtest).

Bin files are read directly (Qlib's ``.day.bin``: little-endian float32, the first value the index of the first
bar in the calendar): it is much faster than ``qlib.init`` and works on a folder Qlib could not open at all.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..errors import ConfigError

REQUIRED_FIELDS = ("open", "high", "low", "close", "volume")
#: What a missing optional field costs.
OPTIONAL_FIELDS = {"factor": "the backtest trades without rounding to 100-share lots",
                   "amount": "amount = volume x mean(OHLC)",
                   "vwap": "Kronos does not read it; Alpha158's VWAP0 feature and Alpha360's VWAP0..59 are NaN"}
PRICE_FIELDS = ("open", "high", "low", "close")
QLIB_LAYOUT = ("calendars", "instruments", "features")
#: A fractional daily change has a median |$change| near 0.01-0.02; in percent it is near 1-2. Single bars
#: are no guide: clean CN data has |$change| up to 6 (stocks resuming after long suspensions).
PERCENT_CHANGE_MEDIAN = 0.5
PERCENT_CHANGE_Q99 = 1.5
MOSTLY_NAN = 0.5

Date = str | pd.Timestamp | None


@dataclass
class DataReport:
    """What a check found: ``errors`` would break a run, ``warnings`` would only weaken it."""

    provider: Path
    info: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def __str__(self) -> str:
        lines = [f"Qlib data folder {self.provider}"]
        lines += [f"  {line}" for line in self.info]
        lines += [f"warning: {line}" for line in self.warnings]
        lines += [f"error: {line}" for line in self.errors]
        verdict = "OK" if self.ok else f"{len(self.errors)} error(s)"
        return "\n".join(lines + [f"{verdict}, {len(self.warnings)} warning(s)"])


def check_data(provider: str | Path, market: str | Sequence[str] = "csi300", start: Date = None,
               end: Date = None, *, backtest_end: Date = None, benchmark: str | None = "SH000300",
               history: int = 0, sample: int | None = 100) -> DataReport:
    """Check ``provider`` for a run on ``market`` (a market name or a list of codes) over [start, end].

    ``end`` must lie in the calendar; ``backtest_end`` must lie a trading day before its last day (Qlib trades a
    signal at t + 1); ``history`` trading days should precede ``start``. ``benchmark`` None skips that check.
    Values are checked on ``sample`` members spread evenly over the sorted codes (None: all of them).
    """
    start, end, backtest_end = (_date(value, name) for value, name in
                                ((start, "start"), (end, "end"), (backtest_end, "backtest end")))
    report = DataReport(Path(provider).expanduser().absolute())
    missing = [f"{name}/" for name in QLIB_LAYOUT if not (report.provider / name).is_dir()]
    if missing:
        report.errors.append(f"not a Qlib data folder: it lacks {', '.join(missing)}")
        return report
    calendar = read_calendar(report.provider, report)
    if calendar is None:
        return report
    _check_dates(report, calendar, start, end, backtest_end, history)
    first, last = max(start or calendar[0], calendar[0]), min(end or calendar[-1], calendar[-1])
    members = _members(report, market, first, last, calendar) if first <= last else {}
    if not members:
        return report
    folders = _feature_folders(report, members)
    if benchmark:
        _check_benchmark(report, benchmark, calendar)
    if folders:
        _check_fields(report, folders)
        _check_values(report, folders, members, calendar, sample)
    return report


def _date(value: Date, name: str) -> pd.Timestamp | None:
    try:
        return None if value is None else pd.Timestamp(value)
    except ValueError as err:
        raise ConfigError(f"{name} '{value}' is not a date: {err}") from err


def read_calendar(provider: Path, report: DataReport) -> pd.DatetimeIndex | None:
    """The daily calendar, or None with an error in ``report``."""
    path = provider / "calendars" / "day.txt"
    if not path.is_file():
        report.errors.append("no daily calendar: calendars/day.txt is missing")
        return None
    numbered = [(i, line.strip()) for i, line in enumerate(path.read_text().splitlines(), 1) if line.strip()]
    try:
        calendar = pd.DatetimeIndex(pd.to_datetime([day for _, day in numbered], format="%Y-%m-%d"))
    except ValueError as err:
        report.errors.append(f"calendars/day.txt holds a line that is not a date: {err}")
        return None
    if calendar.empty:
        report.errors.append("calendars/day.txt is empty")
        return None
    steps = np.diff(calendar.values)
    if (steps <= np.timedelta64(0)).any():
        # Qlib indexes bars by calendar position: a repeated day serves every later bar a trading day early
        i = int(np.argmax(steps <= np.timedelta64(0))) + 1
        what = "repeats" if steps[i - 1] == np.timedelta64(0) else "comes before"
        report.errors.append(f"calendars/day.txt line {numbered[i][0]} ({calendar[i].date()}) {what} the day on "
                             f"line {numbered[i - 1][0]} ({calendar[i - 1].date()}): the calendar must hold "
                             f"strictly increasing dates")
        return None
    report.info.append(f"calendar: {calendar[0].date()}..{calendar[-1].date()}, {len(calendar)} trading days")
    return calendar


def _check_dates(report: DataReport, calendar: pd.DatetimeIndex, start: pd.Timestamp | None,
                 end: pd.Timestamp | None, backtest_end: pd.Timestamp | None, history: int) -> None:
    last = calendar[-1].date()
    if start and end and start > end:
        report.errors.append(f"start {start.date()} is after end {end.date()}")
    if start and start > calendar[-1]:
        report.errors.append(f"start {start.date()} is after the calendar's last day {last}")
    elif start and (before := int(calendar.searchsorted(start))) < history:
        report.warnings.append(f"only {before} trading day(s) before start {start.date()} (the calendar starts "
                               f"{calendar[0].date()}), {history} wanted as history: the first days have "
                               f"shorter contexts")
    if end and end > calendar[-1]:
        report.errors.append(f"end {end.date()} is after the calendar's last day {last}: the calendar is shorter "
                             f"than the dates asked for")
    if backtest_end and backtest_end >= calendar[-1]:
        report.errors.append(f"backtest end {backtest_end.date()} must be at least one trading day before the "
                             f"calendar's last day {last} (Qlib trades a signal at t + 1)")


def _members(report: DataReport, market: str | Sequence[str], first: pd.Timestamp, last: pd.Timestamp,
             calendar: pd.DatetimeIndex) -> dict[str, list[tuple[pd.Timestamp, pd.Timestamp]]]:
    """Each code's membership spans of ``market`` that overlap [first, last], clipped to it."""
    if not isinstance(market, str):
        report.info.append(f"instruments: {len(market)} codes given")
        return {code: [(first, last)] for code in market}
    folder = report.provider / "instruments"
    path = folder / f"{market.lower()}.txt"  # Qlib lower-cases market names
    if not path.is_file():
        found = ", ".join(sorted(p.stem for p in folder.glob("*.txt"))) or "none"
        report.errors.append(f"market '{market}' has no instruments file instruments/{path.name} "
                             f"(markets found: {found})")
        return {}
    spans = pd.read_csv(path, sep="\t", header=None, names=["code", "start", "end"], usecols=[0, 1, 2],
                        parse_dates=["start", "end"])
    if (folder / "all.txt").is_file() and market.lower() != "all":
        listed = pd.read_csv(folder / "all.txt", sep="\t", header=None, usecols=[0])[0].nunique()
        report.info.append(f"instruments/all.txt: {listed} instruments")
    overlap = spans[(spans["start"] <= last) & (spans["end"] >= first)]
    members: dict[str, list[tuple[pd.Timestamp, pd.Timestamp]]] = {}
    for row in overlap.itertuples():
        members.setdefault(row.code, []).append((max(row.start, first), min(row.end, last)))
    if not members:
        report.errors.append(f"market '{market}' has no members between {first.date()} and {last.date()}")
        return members
    days = calendar[(calendar >= first) & (calendar <= last)]
    per_day = pd.Series(0, index=days)
    for periods in members.values():
        for a, b in periods:
            per_day[a:b] += 1
    report.info.append(f"market '{market}': {len(members)} members between {first.date()} and {last.date()}, "
                       f"{per_day.min()}..{per_day.max()} on a day")
    return members


def _feature_folders(report: DataReport, members: dict) -> dict[str, Path]:
    """Each member's feature folder where Qlib looks for it (lower case); what is missing, reported."""
    features = report.provider / "features"
    names = {p.name for p in features.iterdir() if p.is_dir()}
    folders = {code: features / code.lower() for code in members if code.lower() in names}
    absent = sorted(set(members) - set(folders))
    upper = [code for code in absent if code.upper() in names or code in names]
    if upper:
        report.errors.append(f"{len(upper)} member(s) have an upper-case feature folder (e.g. features/"
                             f"{upper[0].upper()}) that Qlib cannot find: it looks for features/{upper[0].lower()}; "
                             f"rename the folders to lower case")
    others = sorted(set(absent) - set(upper))
    if others and not folders and not upper:
        report.errors.append(f"no member has a feature folder (e.g. features/{others[0].lower()} is missing)")
    elif others:
        report.warnings.append(f"{len(others)} of {len(members)} members have no feature folder "
                               f"(e.g. features/{others[0].lower()}): they are left out")
    return folders


def _check_benchmark(report: DataReport, benchmark: str, calendar: pd.DatetimeIndex) -> None:
    name = f"features/{benchmark.lower()}/close.day.bin"
    path = report.provider / name
    close = read_bin(path, len(calendar)) if path.is_file() else np.empty(0)
    traded = np.flatnonzero(np.isfinite(close))
    if not len(traded):
        report.errors.append(f"benchmark {benchmark} has no close prices in {name}: the backtest needs them")
        return
    report.info.append(f"benchmark {benchmark}: {calendar[traded[0]].date()}..{calendar[traded[-1]].date()}")


def _check_fields(report: DataReport, folders: dict[str, Path]) -> None:
    """Which fields the members have; a field present for only some members is named with one that lacks it."""
    fields = {name: [code for code, folder in folders.items() if not (folder / f"{name}.day.bin").is_file()]
              for name in (*REQUIRED_FIELDS, *OPTIONAL_FIELDS, "change")}
    present = [name for name, lacking in fields.items() if len(lacking) < len(folders)]
    report.info.append(f"fields: {' '.join(present)}")
    for name, lacking in fields.items():
        if not lacking:
            continue
        if len(lacking) < len(folders):
            report.warnings.append(f"${name} is missing for {len(lacking)} of {len(folders)} members "
                                   f"(e.g. features/{lacking[0].lower()}/{name}.day.bin)")
        elif name in REQUIRED_FIELDS:
            report.errors.append(f"${name} is missing: no member has {name}.day.bin, Kronos needs it")
        elif name in OPTIONAL_FIELDS:
            report.warnings.append(f"${name} is missing: {OPTIONAL_FIELDS[name]}")
        else:
            report.warnings.append("$change is missing: Qlib's backtest cannot apply price limits")


def _check_values(report: DataReport, folders: dict[str, Path], members: dict, calendar: pd.DatetimeIndex,
                  sample: int | None) -> None:
    """NaN share inside membership spans and suspicious values, on a sample of members."""
    codes = sorted(folders)
    if sample and len(codes) > sample:
        codes = [codes[i] for i in np.linspace(0, len(codes) - 1, sample).round().astype(int)]
        report.info.append(f"values checked on {len(codes)} of {len(folders)} members (a sample spread over the "
                           f"codes)")
    bars = nan_bars = 0
    bad_price, high_low, changes = [], [], []
    for code in codes:
        values = {name: read_bin(path, len(calendar)) for name in (*PRICE_FIELDS, "change")
                  if (path := folders[code] / f"{name}.day.bin").is_file()}
        inside = np.zeros(len(calendar), dtype=bool)
        for a, b in members[code]:
            inside[calendar.searchsorted(a):calendar.searchsorted(b, side="right")] = True
        if "close" in values:
            bars += int(inside.sum())
            nan_bars += int(np.isnan(values["close"][inside]).sum())
        prices = [values[name][inside] for name in PRICE_FIELDS if name in values]
        if prices and (np.stack(prices) <= 0).any():
            bad_price.append(code)
        if "high" in values and "low" in values and (values["high"][inside] < values["low"][inside]).any():
            high_low.append(code)
        if "change" in values:
            changes.append(np.abs(values["change"][inside & np.isfinite(values["change"])]))
    if bars:
        share = nan_bars / bars
        report.info.append(f"NaN bars (suspended or missing) while a member: {share:.1%} of {bars}")
        if share > MOSTLY_NAN:
            report.warnings.append(f"{share:.0%} of member bars are NaN: few windows and forecasts")
    if bad_price:
        report.warnings.append(f"{len(bad_price)} member(s) have non-positive prices (e.g. {bad_price[0]})")
    if high_low:
        report.warnings.append(f"{len(high_low)} member(s) have bars with high < low (e.g. {high_low[0]})")
    change = np.concatenate(changes) if changes else np.empty(0)
    if len(change):
        median, q99 = np.median(change), np.quantile(change, 0.99)
        if median > PERCENT_CHANGE_MEDIAN or q99 > PERCENT_CHANGE_Q99:
            report.errors.append(f"$change looks like percent, not a fraction (median |change| {median:.3g}, "
                                 f"99% quantile {q99:.3g}): Qlib's price limits would block most trades")


def read_bin(path: Path, length: int) -> np.ndarray:
    """One field of one instrument aligned to a calendar of ``length`` days (NaN where it has no bar)."""
    raw = np.fromfile(path, dtype="<f4")
    out = np.full(length, np.nan, dtype=np.float32)
    if len(raw) > 1:
        begin = int(raw[0])
        values = raw[1:][:max(0, length - begin)]
        out[begin:begin + len(values)] = values
    return out
