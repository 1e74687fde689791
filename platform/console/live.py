"""The live progress display on a terminal (rich): redrawn in place, never scrolled."""
from typing import TextIO

from maskunet_platform.console.progress import Progress, Stage, Steps, format_duration


class LiveProgress(Progress):
    """A spinner per running stage, a bar with fields and ETA for steps, and one line per
    finished stage printed above the live part."""

    def __init__(self, stream: TextIO):
        super().__init__()
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, SpinnerColumn, \
            TextColumn, TimeElapsedColumn

        self.console = Console(file=stream, highlight=False, soft_wrap=False)
        self._rich = RichProgress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(bar_width=24),
                                  MofNCompleteColumn(), TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
                                  console=self.console, refresh_per_second=4, redirect_stdout=False,
                                  redirect_stderr=False)
        self._tasks: dict[int, int] = {}
        self._rich.start()

    def line(self, text: str) -> None:
        self.console.print(text, markup=False)

    def warn(self, text: str) -> None:
        self.console.print(f"[yellow]warning:[/yellow] {_escape(text)}")

    def _opened(self, stage: Stage) -> None:
        super()._opened(stage)
        total = stage.total if isinstance(stage, Steps) else None
        completed = stage.start if isinstance(stage, Steps) else 0
        self._tasks[id(stage)] = self._rich.add_task(stage.name, total=total, completed=completed, info="")

    def _stage_done(self, stage: Stage, seconds: float, note: str) -> None:
        super()._stage_done(stage, seconds, note)
        task = self._tasks.pop(id(stage), None)
        if task is not None:
            self._rich.remove_task(task)
        detail = f"  [dim]{_escape(note)}[/dim]" if note else ""
        self.console.print(f"[green]✓[/green] {_escape(stage.name)} [dim]{format_duration(seconds)}[/dim]{detail}")

    def _stage_abandoned(self, stage: Stage) -> None:
        super()._stage_abandoned(stage)
        task = self._tasks.pop(id(stage), None)
        if task is not None:
            self._rich.remove_task(task)

    def _steps_updated(self, steps: Steps) -> None:
        task = self._tasks.get(id(steps))
        if task is not None:
            self._rich.update(task, completed=steps.done_count, info=steps.detail())

    def close(self) -> None:
        super().close()
        self._rich.stop()


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)
