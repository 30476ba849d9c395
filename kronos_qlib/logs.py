"""Log lines and progress bars that stay readable wherever they go: a terminal, qrun's output, a log file."""
from __future__ import annotations

import logging
import sys

from tqdm.auto import tqdm

#: Seconds between redraws of a progress bar whose output is not a terminal: a log file gets a line per
#: interval instead of one per update (a half-hour run otherwise writes megabytes of redrawn bars).
FILE_REDRAW_SECONDS = 30.0


class _ToQlibHandlers(logging.Handler):
    """Hands kronos_qlib's records to the handlers Qlib configured for its own loggers (looked up when used, so
    it works whether qlib.init ran before or after this was attached)."""

    def emit(self, record: logging.LogRecord) -> None:
        handlers = logging.getLogger("qlib").handlers
        if not handlers:  # Qlib not initialized: what Python shows without any handler
            if record.levelno >= logging.WARNING:
                logging.lastResort.handle(record)
            return
        for handler in handlers:
            if record.levelno >= handler.level:
                handler.handle(record)


def follow_qlib_logging() -> None:
    """Show kronos_qlib's INFO lines (epochs, output folders, reused stages, cached forecasts) where Qlib shows
    its own, e.g. in qrun's output, which configures handlers for the "qlib" loggers only.

    Does nothing where the application configured logging itself (the root logger has handlers) or when
    called again.
    """
    ours = logging.getLogger("kronos_qlib")
    if logging.getLogger().handlers or any(isinstance(h, _ToQlibHandlers) for h in ours.handlers):
        return
    ours.addHandler(_ToQlibHandlers())
    if ours.level == logging.NOTSET:
        ours.setLevel(logging.INFO)


def progress_bar(iterable=None, **kwargs) -> tqdm:
    """A tqdm bar that redraws at most every :data:`FILE_REDRAW_SECONDS` when stderr is not a terminal."""
    if not sys.stderr.isatty():
        kwargs.setdefault("mininterval", FILE_REDRAW_SECONDS)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kwargs)
