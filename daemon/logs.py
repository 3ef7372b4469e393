"""structlog set-up: JSON lines when the stream is not a terminal (journald keeps them), a
readable console when it is, the level from `--verbose` or $PRIVACY_LEDGER_LOG_LEVEL, and
every known secret redacted from every line in every form it can take (escaped,
URL-encoded, inside a Basic header's base64, cut off). When the stream is journald's (systemd
names it in $JOURNAL_STREAM), each line starts with its syslog priority, `<4>` for a warning,
which journald reads as the entry's priority and strips, so that `journalctl -p warning`
shows warnings and errors."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable, Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any, TextIO

import structlog

from connectors.http import Redactor

_redactor = Redactor()
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR}
LEVEL_ENV = "PRIVACY_LEDGER_LOG_LEVEL"
# Set once from the command line; every later configure() (the daemon's too) keeps it.
_level = logging.INFO


def add_secrets(values: Iterable[str]) -> None:
    """Register secret values that must never appear in a log line."""
    _redactor.add(values)


def parse_level(text: str, origin: str = LEVEL_ENV) -> int:
    """A logging level from its name; ValueError naming `origin` and the choices."""
    level = LEVELS.get(text.strip().lower())
    if level is None:
        raise ValueError(f"{origin}: {text!r} is not a log level: use one of "
                         f"{', '.join(LEVELS)}")
    return level


def set_level(level: int) -> None:
    global _level  # noqa: PLW0603 - one process, one verbosity
    _level = level


def redact_text(text: str) -> str:
    """The text with every registered secret redacted."""
    return _redactor(text)


def _redact(value: Any) -> Any:
    if isinstance(value, str):
        return _redactor(value)
    if isinstance(value, dict):
        return {k: _redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_redact(v) for v in value)
    return value


def redact_processor(_logger: Any, _name: str,
                     event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in list(event.items()):
        event[key] = _redact(value)
    return event


# syslog(3) priorities, as journald reads them from a `<N>` line prefix (SyslogLevelPrefix=).
PRIORITIES = {"debug": 7, "info": 6, "warning": 4, "warn": 4, "error": 3, "exception": 3,
              "critical": 2}


def is_journal(stream: TextIO) -> bool:
    """True when `stream` is the journald stream systemd connected (its device and inode are
    the ones $JOURNAL_STREAM names): a redirected stream of a child is not."""
    named = os.environ.get("JOURNAL_STREAM", "")
    try:
        status = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return False
    return bool(named) and named == f"{status.st_dev}:{status.st_ino}"


class JournalPrefix:
    """Wraps a renderer: the rendered line, led by its level's syslog priority."""

    def __init__(self, renderer: Any) -> None:
        self.renderer = renderer

    def __call__(self, logger: Any, name: str, event: MutableMapping[str, Any]) -> str:
        priority = PRIORITIES.get(str(event.get("level", name)).lower(), 6)
        return f"<{priority}>{self.renderer(logger, name, event)}"


def configure(stream: TextIO | None = None, *, level: int | None = None,
              json: bool | None = None) -> None:
    """Log to `stream` at `level` (absent: the level set_level() chose, info by default)."""
    stream = stream or sys.stdout
    level = _level if level is None else level
    as_json = (not stream.isatty()) if json is None else json
    renderer: Any = (structlog.processors.JSONRenderer() if as_json
                     else structlog.dev.ConsoleRenderer(colors=stream.isatty()))
    if is_journal(stream):
        renderer = JournalPrefix(renderer)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact_processor,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )


class _LeaveOut:
    """Drops the events a command's own display already says (a summary line per source)."""

    def __init__(self, events: Iterable[str]) -> None:
        self.events = frozenset(events)

    def __call__(self, _logger: Any, _name: str,
                 event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        if event.get("event") in self.events:
            raise structlog.DropEvent
        return event


@contextmanager
def shown_on(stream: TextIO | None = None, *, leave_out: Iterable[str] = (),
             least: int | None = None) -> Iterator[None]:
    """While a command shows its own display: log lines go to `stream` (the display's
    console, so that none is glued onto a progress bar), rendered as configured, without
    the events in `leave_out` and below level `least`. The configuration comes back after."""
    before = structlog.get_config()
    changes: dict[str, Any] = {}
    if stream is not None:
        changes["logger_factory"] = structlog.PrintLoggerFactory(stream)
    if leave_out:
        processors = list(before["processors"])
        changes["processors"] = [*processors[:-1], _LeaveOut(leave_out), processors[-1]]
    if least is not None:
        changes["wrapper_class"] = structlog.make_filtering_bound_logger(least)
    structlog.configure(**changes)
    try:
        yield
    finally:
        structlog.configure(**{key: before[key] for key in changes})
