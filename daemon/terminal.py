"""What `sync` shows on a terminal while it runs: one progress bar per source (rich), with
the upstream's own total where the API gives one (WooCommerce X-WP-Total, Mailchimp
total_items), else a spinner with a count (Stripe), the rate and the time left. Log lines
are printed through the same console, above the bars, never onto one."""

from __future__ import annotations

import sys
import threading
from types import TracebackType
from typing import TextIO

from rich.console import Console, RenderableType
from rich.file_proxy import FileProxy
from rich.progress import (
    BarColumn,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as Bars
from rich.text import Text

from connectors.base import Progress


class _Spinner(SpinnerColumn):
    """Spins while the source is read; a tick once it is done."""

    def render(self, task: Task) -> RenderableType:
        return Text("✓") if task.fields.get("done") else super().render(task)


class _Bar(BarColumn):
    """The bar where a total is known; nothing where it is not (the spinner says it)."""

    def render(self, task: Task) -> RenderableType:
        return Text("") if task.total is None else super().render(task)


class _Count(ProgressColumn):
    """`120/389 customers`, or `759 records` without a total."""

    def render(self, task: Task) -> Text:
        kind = task.fields.get("kind", "records")
        done = int(task.completed)
        if task.total is None:
            return Text(f"{done:,} {kind}")
        return Text(f"{done:,}/{int(task.total):,} {kind}")


class _Rate(ProgressColumn):
    """Records a second, over the last seconds."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f}/s" if speed else "", style="progress.data.speed")


class _Left(ProgressColumn):
    """Time left where a total is known, else the time spent."""

    def __init__(self) -> None:
        super().__init__()
        self.left = TimeRemainingColumn()
        self.spent = TimeElapsedColumn()

    def render(self, task: Task) -> Text:
        return self.spent.render(task) if task.total is None else self.left.render(task)


def _plural(record_type: str) -> str:
    return record_type if record_type.endswith("s") else f"{record_type}s"


class SyncDisplay:
    """The bars of one `sync` on `stream` (a terminal). Sources sync one after another: a
    source's bar is finished when the next one reports. The bars disappear when the display
    ends, leaving the lines printed above them (logs) for the summary that follows."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.console = Console(file=stream or sys.stderr, highlight=False, emoji=False,
                               markup=False)
        self.bars = Bars(_Spinner(),
                         TextColumn("{task.description}", markup=False), _Bar(), _Count(),
                         _Rate(), _Left(), console=self.console, transient=True,
                         redirect_stdout=False, redirect_stderr=False)
        self._tasks: dict[str, TaskID] = {}
        self._kinds: dict[str, str] = {}
        self._lock = threading.Lock()

    @property
    def log_stream(self) -> TextIO:
        """A file whose lines are printed above the bars (for logs.shown_on)."""
        return FileProxy(self.console, self.console.file)  # type: ignore[return-value]

    def __enter__(self) -> SyncDisplay:
        self.bars.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        with self._lock:
            for task in self._tasks.values():
                self._finish(task)
        self.bars.stop()

    def update(self, source: str, progress: Progress) -> None:
        """Called after each committed batch (from the sync's thread); `source` is shown as
        given, so it must be fit for the terminal already."""
        kind = _plural(progress.record_type)
        with self._lock:
            task = self._tasks.get(source)
            if task is None:
                for other in self._tasks.values():
                    self._finish(other)
                self._tasks[source] = self.bars.add_task(
                    source, total=progress.total, completed=progress.done, kind=kind)
            elif self._kinds[source] != progress.record_type:
                # The next listing (orders after customers): its own count, rate and time.
                self.bars.reset(task, total=progress.total, completed=progress.done,
                                kind=kind)
            else:
                self.bars.update(task, total=progress.total, completed=progress.done)
            self._kinds[source] = progress.record_type
            # Drawn now, not at the next tick: every batch's count is seen, however fast.
            self.bars.refresh()

    def _finish(self, task: TaskID) -> None:
        self.bars.update(task, done=True)
        self.bars.stop_task(task)
