"""ALOE multi-turn alignment ratings -> the paper's Table 2 (CDRA §3.2): the mean 1-5 rating at each
turn k = 1..10 and on average, one row per policy version (and rating source), as Markdown, CSV and a
line plot. Human ratings come from the app's ALOE sessions, simulated ones from the eval harness.
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from alignment.errors import CdraError

MAX_TURNS = 10
Source = Literal["human", "simulated"]


@dataclass(frozen=True)
class AloeRating:
    """One rating of one turn of one session, by a person (the app) or a simulated user (eval)."""

    session_id: str
    policy_version: str
    turn: int  # 1..10
    rating: int  # 1..5
    source: Source = "human"

    def __post_init__(self) -> None:
        if isinstance(self.turn, bool) or not isinstance(self.turn, int) or not 1 <= self.turn <= MAX_TURNS:
            raise CdraError(
                f"ALOE turn must be 1..{MAX_TURNS}, not {self.turn!r} (session {self.session_id})"
            )
        if isinstance(self.rating, bool) or not isinstance(self.rating, int) or not 1 <= self.rating <= 5:
            raise CdraError(
                f"ALOE rating must be a whole number 1..5, not {self.rating!r} (session {self.session_id})"
            )
        if self.source not in ("human", "simulated"):
            raise CdraError(f"ALOE rating source must be human or simulated, not {self.source!r}")


@dataclass
class AloeRow:
    """One line of Table 2: a policy version's mean rating per turn and its average."""

    policy_version: str
    source: str
    sessions: int
    per_turn: list[float | None]  # index k-1; None where no session reached turn k
    counts: list[int]
    average: float  # mean of the per-turn means, as the paper's "Average" column
    overall: float  # mean of all ratings (equal to ``average`` when every session has all turns)
    label: str = ""
    extra: dict = field(default_factory=dict)


def _dedupe(ratings: Iterable[AloeRating]) -> list[AloeRating]:
    """A re-rated turn counts once: the last rating given for (session, turn, source) wins."""
    latest: dict[tuple[str, int, str], AloeRating] = {}
    for r in ratings:
        latest[(r.session_id, r.turn, r.source)] = r
    return list(latest.values())


def aloe_table(ratings: Iterable[AloeRating]) -> list[AloeRow]:
    """Rows sorted by policy version then source; labels add the source only when both kinds exist."""
    groups: dict[tuple[str, str], list[AloeRating]] = defaultdict(list)
    for r in _dedupe(ratings):
        groups[(r.policy_version, r.source)].append(r)
    sources = {s for _, s in groups}
    rows = []
    for (version, source), items in sorted(groups.items()):
        by_turn: dict[int, list[int]] = defaultdict(list)
        for r in items:
            by_turn[r.turn].append(r.rating)
        per_turn = [
            round(sum(v) / len(v), 4) if (v := by_turn.get(k)) else None for k in range(1, MAX_TURNS + 1)
        ]
        present = [m for m in per_turn if m is not None]
        all_ratings = [r.rating for r in items]
        rows.append(
            AloeRow(
                policy_version=version,
                source=source,
                sessions=len({r.session_id for r in items}),
                per_turn=per_turn,
                counts=[len(by_turn.get(k, [])) for k in range(1, MAX_TURNS + 1)],
                average=round(sum(present) / len(present), 4),
                overall=round(sum(all_ratings) / len(all_ratings), 4),
                label=version if len(sources) == 1 else f"{version} ({source})",
            )
        )
    return rows


def _fmt(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def to_markdown(rows: Sequence[AloeRow]) -> str:
    head = ["Model", *[f"k={k}" for k in range(1, MAX_TURNS + 1)], "Average", "Sessions"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row.label, *[_fmt(m) for m in row.per_turn], _fmt(row.average), str(row.sessions)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def to_csv(rows: Sequence[AloeRow]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(
        [
            "policy_version",
            "source",
            "sessions",
            *[f"k{k}" for k in range(1, MAX_TURNS + 1)],
            *[f"n_k{k}" for k in range(1, MAX_TURNS + 1)],
            "average",
            "overall",
        ]
    )
    for row in rows:
        writer.writerow(
            [
                row.policy_version,
                row.source,
                row.sessions,
                *["" if m is None else f"{m:.4f}" for m in row.per_turn],
                *row.counts,
                f"{row.average:.4f}",
                f"{row.overall:.4f}",
            ]
        )
    return buf.getvalue()


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def plot(rows: Sequence[AloeRow], path: Path) -> None:
    """Mean alignment rating against turn k, one line per row (Agg backend: no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    ks = list(range(1, MAX_TURNS + 1))
    for row in rows:
        points = [(k, m) for k, m in zip(ks, row.per_turn) if m is not None]
        ax.plot(
            [k for k, _ in points],
            [m for _, m in points],
            marker="o",
            label=f"{row.label} (avg {row.average:.2f})",
        )
    ax.set(
        xlabel="turn k",
        ylabel="mean alignment (1-5)",
        title="ALOE multi-turn alignment",
        xticks=ks,
        ylim=(1, 5),
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    try:
        _atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        plt.close(fig)


@dataclass
class AloeReport:
    rows: list[AloeRow]
    markdown: str
    markdown_path: Path
    csv_path: Path
    png_path: Path


def write_aloe_report(ratings: Iterable[AloeRating], out_dir: str | Path, stem: str = "aloe") -> AloeReport:
    """Write ``<stem>.md``, ``<stem>.csv`` and ``<stem>.png`` into ``out_dir`` (atomically) and return them."""
    ratings = list(ratings)
    if not ratings:
        raise CdraError(
            "no ALOE ratings to report: rate the turns of an ALOE session in the app's ALOE tab "
            "(or run the simulated ALOE evaluation) first"
        )
    rows = aloe_table(ratings)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    markdown = to_markdown(rows)
    md_path, csv_path, png_path = out / f"{stem}.md", out / f"{stem}.csv", out / f"{stem}.png"
    _atomic_write(
        md_path,
        lambda tmp: Path(tmp).write_text(
            "# ALOE multi-turn alignment (mean rating 1-5 at turn k)\n\n" + markdown, encoding="utf-8"
        ),
    )
    _atomic_write(csv_path, lambda tmp: Path(tmp).write_text(to_csv(rows), encoding="utf-8"))
    plot(rows, png_path)
    return AloeReport(rows, markdown, md_path, csv_path, png_path)
