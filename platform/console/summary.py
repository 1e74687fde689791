"""The closing summary of a command: what ran, where its outputs are, key figures, time per
stage, the log file and the command to look at the result. `--json` prints `data` instead."""
from dataclasses import dataclass, field
from typing import Any, Optional

from maskunet_platform.console.progress import format_duration


@dataclass
class Summary:
    title: str
    rows: list[tuple[str, str]] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)  # the --json object, exactly as given
    show_timings: bool = True
    show_log: bool = True  # False when the command did no work worth a log (e.g. a report)

    def add(self, label: str, value: Any) -> "Summary":
        """A `label: value` row; None values are left out."""
        if value is not None and value != "":
            self.rows.append((label, str(value)))
        return self

    def render(self, timings: Optional[dict[str, float]] = None, log_file: Optional[str] = None,
               next_step: Optional[str] = None, total_s: Optional[float] = None) -> list[str]:
        rows = list(self.rows)
        if self.show_timings and timings:
            stages = ", ".join(f"{name} {format_duration(s)}" for name, s in timings.items() if s >= 0.05)
            rows.append(("time:", f"{format_duration(total_s)} ({stages})" if total_s else stages))
        if log_file and self.show_log:
            rows.append(("log:", log_file))
        if next_step:
            rows.append(("next:", next_step))
        width = max((len(label) for label, _ in rows), default=0) + 1
        return [self.title, *(f"{label.ljust(width)}{value}".rstrip() for label, value in rows)]
