"""What the reliability tests observed, kept for `docs/reliability.md`.

Tests record one row per fault or input class; at the end of the session the rows are
merged into ``build/reports/reliability.json`` by section, so a run of one test file
refreshes its own sections and keeps the others. ``python -m wasmfleet_harness.findings``
prints the file as the Markdown tables the report quotes.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wasmfleet_harness.binaries import REPO_ROOT

__all__ = ["REPORT", "Findings"]

REPORT = REPO_ROOT / "build" / "reports" / "reliability.json"


@dataclass
class Findings:
    path: Path = REPORT
    sections: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def record(self, section: str, **row: Any) -> None:
        self.sections.setdefault(section, []).append(row)

    def save(self) -> None:
        if not self.sections:
            return
        try:
            merged: dict[str, Any] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            merged = {}
        merged.update(self.sections)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(merged, indent=2, sort_keys=True) + "\n")


def markdown(report: dict[str, list[dict[str, Any]]]) -> str:
    parts = []
    for section, rows in sorted(report.items()):
        columns = list(dict.fromkeys(key for row in rows for key in row))
        lines = [f"### {section}", "", "| " + " | ".join(columns) + " |"]
        lines.append("|" + "---|" * len(columns))
        for row in rows:
            lines.append("| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value).replace("|", "\\|")


if __name__ == "__main__":
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else REPORT
    sys.stdout.write(markdown(json.loads(path.read_text())))
