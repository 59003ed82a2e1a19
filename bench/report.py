"""Medians, ratios against createdump, and the issue's goals, per target; as text and Markdown."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from common import MIB
from measure import COUNTERPART, CREATEDUMP, DumpRecord

FIELDS = ("size_bytes", "wall_seconds", "pause_seconds", "extra_gaps", "extra_gap_seconds",
          "steal_seconds", "cpu_seconds", "peak_rss_mib", "self_paused_seconds",
          "proc_pause_seconds")
RATIO_FIELDS = (("size", "size_bytes"), ("pause", "pause_seconds"), ("wall", "wall_seconds"),
                ("CPU", "cpu_seconds"), ("peak RSS", "peak_rss_mib"))

# The pause goals (seconds), by target and minidumper mode.
PAUSE_GOALS = {("small", "heap"): 0.040, ("small", "mini"): 0.020, ("aspnet", "heap"): 0.120,
               ("threads", "heap"): 0.150, ("threads", "mini"): 0.120}


def summarize(records: list[DumpRecord]) -> dict[tuple[str, str, str], dict]:
    """(target, tool, mode) -> medians over the successful runs, and counts."""
    keys = list(dict.fromkeys((r.target, r.tool, r.mode) for r in records))
    summary = {}
    for key in keys:
        runs = [r for r in records if (r.target, r.tool, r.mode) == key]
        good = [r for r in runs if r.ok]
        entry = {"runs": len(runs), "ok": len(good),
                 "ipc": any(r.method == "diagnostics-ipc" for r in good),
                 "errors": sorted({r.error for r in runs if not r.ok and r.error})}
        for name in FIELDS:
            values = [getattr(r, name) for r in good if getattr(r, name) is not None]
            entry[name] = statistics.median(values) if values else None
        summary[key] = entry
    return summary


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def ratios(summary: dict) -> dict[tuple[str, str, str], dict[str, float | None]]:
    """(target, minidumper tool, mode) -> {field label: minidumper / createdump}."""
    result = {}
    for (target, tool, mode), entry in summary.items():
        other = summary.get((target, CREATEDUMP, COUNTERPART.get(mode, "")))
        if tool == CREATEDUMP or other is None:
            continue
        result[(target, tool, mode)] = {label: _ratio(entry[name], other[name])
                                        for label, name in RATIO_FIELDS}
    return result


@dataclass
class Goal:
    target: str
    text: str
    value: float | None
    limit: float

    @property
    def verdict(self) -> str:
        return "n/a" if self.value is None else ("met" if self.value <= self.limit else "NOT met")


def goals(summary: dict, copy_rates: dict[str, float], tool: str = "minidumper") -> list[Goal]:
    found = []
    for target in dict.fromkeys(k[0] for k in summary):
        mine = {m: summary.get((target, tool, m)) for m in COUNTERPART}
        theirs = {m: summary.get((target, CREATEDUMP, c)) for m, c in COUNTERPART.items()}
        get = lambda e, name: e.get(name) if e else None   # noqa: E731
        rate = copy_rates.get(target)
        for mode in ("heap", "mini"):
            if (target, mode) in PAUSE_GOALS:
                found.append(Goal(target, f"{mode} pause (s)", get(mine[mode], "pause_seconds"),
                                  PAUSE_GOALS[(target, mode)]))
        if target == "managed" and rate and mine["heap"]:
            floor = mine["heap"]["size_bytes"] / rate
            found.append(Goal(target, f"heap pause / copy floor ({floor:.3f} s)",
                              _ratio(mine["heap"]["pause_seconds"], floor), 1.3))
        if rate and mine["full"]:
            floor = mine["full"]["size_bytes"] / rate
            found.append(Goal(target, f"full pause / copy floor ({floor:.3f} s)",
                              _ratio(mine["full"]["pause_seconds"], floor), 1.2))
        for mode, limit in (("full", 1.1), ("mini", 1.5), ("heap", 1.0)):
            found.append(Goal(target, f"{mode} wall / createdump {COUNTERPART[mode]} wall",
                              _ratio(get(mine[mode], "wall_seconds"),
                                     get(theirs[mode], "wall_seconds")), limit))
        for mode in COUNTERPART:
            a, b = get(mine[mode], "extra_gaps"), get(theirs[mode], "extra_gaps")
            found.append(Goal(target, f"{mode}: extra gaps >= 5 ms, minus createdump's",
                              None if a is None or b is None else a - b, 0))
    return found


def _f(value: float | None, spec: str, scale: float = 1.0) -> str:
    return "-" if value is None else format(value * scale, spec)


def table_rows(summary: dict) -> list[list[str]]:
    rows = []
    for (target, tool, mode), e in summary.items():
        rows.append([target, tool, mode + ("*" if e["ipc"] else ""), f"{e['ok']}/{e['runs']}",
                     _f(e["size_bytes"], ".1f", 1 / MIB), _f(e["pause_seconds"], ".1f", 1000),
                     _f(e["wall_seconds"], ".2f"), _f(e["cpu_seconds"], ".2f"),
                     _f(e["peak_rss_mib"], ".0f"), _f(e["extra_gaps"], ".0f"),
                     _f(e["steal_seconds"], ".0f", 1000),
                     _f(e["self_paused_seconds"], ".1f", 1000)])
    return rows


HEADER = ["target", "tool", "mode", "ok", "size MiB", "pause ms", "wall s", "CPU s",
          "peak RSS MiB", "extra gaps", "host steal ms", "self-pause ms"]


def text(summary: dict, ratio_values: dict, goal_list: list[Goal], rounds: int) -> str:
    rows = [HEADER] + table_rows(summary)
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
    lines = [f"medians over {rounds} round(s); pause = the target's own longest clock gap"]
    for i, row in enumerate(rows):
        lines.append("  ".join(c.ljust(w) if j < 3 else c.rjust(w)
                               for j, (c, w) in enumerate(zip(row, widths))))
        if i == 0:
            lines.append("-" * (sum(widths) + 2 * len(widths)))
    for key, e in summary.items():
        for error in e["errors"]:
            lines.append(f"  {' '.join(key)} failed: {error}")
    lines.append("\nratios, minidumper / createdump (medians)")
    for (target, tool, mode), values in ratio_values.items():
        parts = ", ".join(f"{label} {_f(v, '.3f')}" for label, v in values.items())
        lines.append(f"  {target} {tool} {mode} vs {COUNTERPART[mode]}: {parts}")
    lines.append("\ngoals")
    for goal in goal_list:
        lines.append(f"  {goal.target:<8} {goal.text:<52} {_f(goal.value, '.3f'):>8} "
                     f"(limit {goal.limit:g}) {goal.verdict}")
    return "\n".join(lines)


def markdown(summary: dict, ratio_values: dict, goal_list: list[Goal]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + " --- |" * len(HEADER)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(summary)]
    lines += ["", "| target | minidumper mode | vs createdump | "
              + " | ".join(label for label, _ in RATIO_FIELDS) + " |",
              "|" + " --- |" * (3 + len(RATIO_FIELDS))]
    for (target, tool, mode), values in ratio_values.items():
        lines.append(f"| {target} | {tool} {mode} | {COUNTERPART[mode]} | "
                     + " | ".join(_f(v, ".2f") for v in values.values()) + " |")
    lines += ["", "| target | goal | value | limit | verdict |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {g.target} | {g.text} | {_f(g.value, '.3f')} | {g.limit:g} | {g.verdict} |"
              for g in goal_list]
    return "\n".join(lines) + "\n"
