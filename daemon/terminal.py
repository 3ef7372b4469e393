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
)
from rich.progress import Progress as Bars
from rich.text import Text

from connectors.base import Progress


class _Spinner(SpinnerColumn):
    """Spins while the source is read; a tick once it is done."""

    def render(self, task: Task) -> RenderableType:
        # Spinning on past a listing's total: the source may have another listing to read.
        return Text("✓") if task.fields.get("done") else self.spinner.render(task.get_time())


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


def _rate(task: Task) -> float | None:
    """Records a second since the listing's first commit (pages come in bursts when fetched
    side by side: a rate of the last few samples swings with them); None until the second commit."""
    elapsed, read = task.elapsed, task.completed - task.fields.get("first", 0)
    return read / elapsed if elapsed and read > 0 else None


class _Rate(ProgressColumn):
    def render(self, task: Task) -> Text:
        rate = _rate(task)
        return Text(f"{rate:,.0f}/s" if rate else "", style="progress.data.speed")


class _Left(ProgressColumn):
    """Time left at that rate where a total is known, else the time spent."""

    def render(self, task: Task) -> Text:
        rate = _rate(task)
        if task.total is None or task.fields.get("done"):
            seconds = task.elapsed
            style = "progress.elapsed"
        else:
            seconds = max(0.0, task.total - task.completed) / rate if rate else None
            style = "progress.remaining"
        if seconds is None:
            return Text("-:--:--", style=style)
        minutes, second = divmod(int(seconds), 60)
        hours, minute = divmod(minutes, 60)
        return Text(f"{hours}:{minute:02d}:{second:02d}", style=style)


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
                    source, total=progress.total, completed=progress.done, kind=kind,
                    first=progress.done)
            elif self._kinds[source] != progress.record_type:
                # The next listing (orders after customers): its own count, rate and time.
                self.bars.reset(task, total=progress.total, completed=progress.done,
                                kind=kind, first=progress.done)
            else:
                self.bars.update(task, total=progress.total, completed=progress.done)
            self._kinds[source] = progress.record_type
            # Drawn now, not at the next tick: every batch's count is seen, however fast.
            self.bars.refresh()

    def _finish(self, task: TaskID) -> None:
        self.bars.update(task, done=True)
        self.bars.stop_task(task)
