"""A progress bar with ETA for long runs (rich), shown only when stdout is a terminal.

    with progress_bar("compressing", enabled=not args.json) as update:
        compress_model_dir(..., progress=update)   # update(item name, done, total)

When stdout is not a terminal (a pipe, a file, CI) or `enabled` is False the callback does nothing, so
scripted runs see only the final summary.
"""

from __future__ import annotations

import contextlib
import sys


@contextlib.contextmanager
def progress_bar(description: str, *, enabled: bool = True, stream=None):
    """Yield a callback ``update(name, done, total)``; draws a bar with the current item and ETA on a terminal."""
    stream = sys.stdout if stream is None else stream
    if not enabled or not stream.isatty():
        yield lambda name, done, total: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn(),
               TextColumn("ETA"), TimeRemainingColumn(), TextColumn("{task.fields[item]}", style="dim"))
    with Progress(*columns, console=Console(file=stream), transient=True) as bar:
        task = bar.add_task(description, total=None, item="")

        def update(name: str, done: int, total: int) -> None:
            bar.update(task, completed=done, total=total or None, item=name)

        yield update
