"""`cdra prefs show|add|edit|delete|forget|export|import|infer|build-testset --user NAME` over the vector
memory and the preference inferrer, and `cdra bench memory|prefs`. Thin: the work is in memory/ and alignment/."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Optional

import typer

from alignment.errors import CdraError

_REPO = Path(__file__).resolve().parents[2]
DEV_PREFS_TESTSET = _REPO / "data" / "dev" / "prefeval_prefs_test.jsonl"
DEFAULT_PREFEVAL = _REPO.parent / "shared" / "data" / "prefeval"

prefs_app = typer.Typer(help="A user's preference memory: show, edit, forget, export, infer from signals.",
                        no_args_is_help=True)
User = Annotated[str, typer.Option("--user", "-u", help="whose memory")]


def _user_memory(ctx: typer.Context, user: str):
    from app.cli import settings_from
    from memory.vector_store import VectorMemory

    settings = settings_from(ctx)
    return VectorMemory(settings.memory, settings.chroma_dir).for_user(user)


def _print_statements(statements) -> None:
    if not statements:
        typer.echo("(no preferences stored)")
        return
    for s in statements:
        how = "stated" if s.explicit else "inferred"
        typer.echo(f"{s.id}  [{s.stance} | {s.dimension} | {how} | conf {s.confidence:.2f} | v{s.version}]  {s.text}")
        typer.echo(f"{'':18}evidence: {', '.join(s.evidence) or '-'}; updated {s.updated}")


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(tmp, 0o600)  # an export holds everything about a person: readable by its owner only
    os.replace(tmp, path)


@prefs_app.command("show")
def show_cmd(ctx: typer.Context, user: User,
             as_json: Annotated[bool, typer.Option("--json", help="JSON lines instead of text")] = False) -> None:
    """List USER's stored preference statements."""
    statements = _user_memory(ctx, user).list_preferences()
    if as_json:
        for s in statements:
            typer.echo(s.model_dump_json())
    else:
        _print_statements(statements)


@prefs_app.command("add")
def add_cmd(ctx: typer.Context, user: User,
            text: Annotated[str, typer.Argument(help='in your words, e.g. "I\'m allergic to cats"')]) -> None:
    """Add preferences in USER's own words (read by the explicit extractor; else stored as written)."""
    from alignment.explicit_extraction import extract_explicit
    from alignment.preferences import PreferenceStatement

    found = extract_explicit(text, "cli")
    if not found:
        stance = "avoids" if any(w in text.lower() for w in ("avoid", "don't", "do not", "never", "dislike")) else "prefers"
        found = [PreferenceStatement(text=text.strip(), stance=stance, origin="user_edit", confidence=1.0,
                                     evidence=["cli"])]
    ids = _user_memory(ctx, user).add_preferences(found)
    typer.echo(f"stored {len(ids)} statement(s): " + "; ".join(s.text for s in found))


@prefs_app.command("edit")
def edit_cmd(
    ctx: typer.Context,
    user: User,
    statement_id: Annotated[str, typer.Argument(help="the id shown by `cdra prefs show`")],
    text: Annotated[Optional[str], typer.Option("--text", help="new sentence")] = None,
    stance: Annotated[Optional[str], typer.Option("--stance", help="prefers | avoids")] = None,
    dimension: Annotated[Optional[str], typer.Option("--dimension", help="e.g. style, privacy, health")] = None,
    confidence: Annotated[Optional[float], typer.Option("--confidence", min=0.0, max=1.0)] = None,
) -> None:
    """Correct one statement; the old wording is never brought back by inference."""
    if text is None and stance is None and dimension is None and confidence is None:
        raise CdraError("nothing to change: give --text, --stance, --dimension or --confidence")
    updated = _user_memory(ctx, user).edit_preference(statement_id, text=text, stance=stance, dimension=dimension,
                                                      confidence=confidence)
    _print_statements([updated])


@prefs_app.command("delete")
def delete_cmd(ctx: typer.Context, user: User,
               statement_id: Annotated[str, typer.Argument(help="the id shown by `cdra prefs show`")]) -> None:
    """Delete one statement (inference will not silently bring it back)."""
    _user_memory(ctx, user).delete_preference(statement_id)
    typer.echo(f"deleted {statement_id}")


@prefs_app.command("forget")
def forget_cmd(ctx: typer.Context, user: User,
               yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")] = False) -> None:
    """Delete everything the memory holds about USER, from disk."""
    if not yes and not typer.confirm(f"Delete all preferences and remembered turns of {user!r}?", default=False):
        raise typer.Exit(1)
    _user_memory(ctx, user).forget()
    typer.echo(f"forgot {user}: nothing of theirs is left in the vector memory")


@prefs_app.command("export")
def export_cmd(ctx: typer.Context, user: User,
               out: Annotated[Optional[Path], typer.Option("--out", "-o", help="file (default: stdout)")] = None) -> None:
    """Everything stored for USER as JSON."""
    text = json.dumps(_user_memory(ctx, user).export(), indent=2, ensure_ascii=False)
    if out is None:
        sys.stdout.write(text + "\n")
    else:
        _write_atomic(out, text + "\n")
        typer.echo(f"wrote {out}")


@prefs_app.command("import")
def import_cmd(ctx: typer.Context, user: User,
               file: Annotated[Path, typer.Argument(help="a file written by `cdra prefs export`")]) -> None:
    """Restore an export into USER's memory."""
    from alignment.errors import FormatError

    if not file.is_file():
        raise CdraError(f"{file}: no such file")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise FormatError(f"{file}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    counts = _user_memory(ctx, user).import_(data)
    typer.echo(f"imported into {user}: " + ", ".join(f"{v} {k}" for k, v in counts.items()))


@prefs_app.command("infer")
def infer_cmd(
    ctx: typer.Context,
    user: User,
    signals: Annotated[Path, typer.Option("--signals", "-s", help="behavioral signals, JSONL (formats.md)")],
    max_new_tokens: Annotated[int, typer.Option(help="tokens for the reasoning and the description")] = 384,
    retries: Annotated[int, typer.Option(help="extra samples when the output breaks the format")] = 2,
    seed: Annotated[int, typer.Option(help="sampling seed of the first attempt")] = 0,
) -> None:
    """Infer USER's preferences from a signal file and store them (explicit statements first, at once)."""
    from alignment.explicit_extraction import explicit_from_signals
    from alignment.preference_inference import InferenceConfig, PreferenceInferrer
    from alignment.preferences import PreferenceDescription
    from alignment.signals import read_signals
    from app.cli import settings_from
    from app.models import engine_for
    from memory.vector_store import VectorMemory

    parsed = read_signals(signals)  # the whole file is validated before anything is written
    settings = settings_from(ctx)
    memory = VectorMemory(settings.memory, settings.chroma_dir).for_user(user)
    explicit = explicit_from_signals(parsed)
    if explicit:
        memory.add_preferences(explicit)
        typer.echo(f"stored {len(explicit)} explicit statement(s) from the signals")
    inferrer = PreferenceInferrer(engine_for(settings, "preference"),
                                  InferenceConfig(max_new_tokens=max_new_tokens, max_retries=retries, seed=seed))
    previous = PreferenceDescription(statements=memory.list_preferences())
    typer.echo(f"inferring from {len(parsed)} signal(s) with {inferrer.engine.description} …", err=True)
    result = inferrer.infer(parsed, previous, suppressed=memory.suppressed())
    summary = {"signals": len(parsed), "failed": result.failed, "r_format": result.r_format,
               "attempts": result.attempts, "statements": len(result.new_statements),
               "error": result.error or "", "model": inferrer.engine.version, "source": str(signals)}
    memory.record_inference(summary, raw=result.raw)
    if result.failed:
        raise CdraError(f"preference inference failed after {result.attempts} attempt(s): {result.error} "
                        "(recorded in the inference log; nothing was stored as a preference)")
    stored = memory.add_preferences(result.new_statements)
    typer.echo(f"R_format={result.r_format:.0f}; {len(result.new_statements)} statement(s) inferred, "
               f"{len(stored)} stored or updated")
    _print_statements([s for s in memory.list_preferences() if s.id in set(stored)])


@prefs_app.command("build-testset")
def build_testset_cmd(
    prefeval: Annotated[Path, typer.Option("--prefeval", help="PrefEval benchmark_dataset/ directory")] = DEFAULT_PREFEVAL,
    out: Annotated[Path, typer.Option("--out", "-o", help="test set JSONL to write")] = DEV_PREFS_TESTSET,
    signals_from: Annotated[str, typer.Option(help="persona | choice | both: where the signals E come from")] = "persona",
    limit_per_topic: Annotated[Optional[int], typer.Option(help="at most this many items per topic")] = None,
    seed: Annotated[int, typer.Option(help="seed for the rejected option")] = 0,
) -> None:
    """Import PrefEval's implicit records into the preference-inference test set (formats.md)."""
    from training.prefeval import import_preference_testset

    n = import_preference_testset(prefeval, out, signals_from=signals_from, limit_per_topic=limit_per_topic,
                                  seed=seed)  # type: ignore[arg-type]
    typer.echo(f"wrote {n} items to {out}")


def register(app: typer.Typer) -> None:
    app.add_typer(prefs_app, name="prefs")


# -- benchmarks --------------------------------------------------------------------------------------

def _ints(text: str) -> list[int]:
    try:
        values = [int(float(p)) for p in text.replace("_", "").split(",") if p.strip()]
    except ValueError:
        raise CdraError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or min(values) <= 0:
        raise CdraError(f"expected positive numbers, got {text!r}")
    return values


def _bench_texts(path: Path) -> list[str]:
    """Real sentences for memory records: every text field of a test set or signal file, split into sentences."""
    import re

    from alignment.signals import read_testset

    texts: list[str] = []
    for item in read_testset(path):
        for signal in item.signals:
            for field in ("user", "assistant", "text", "post", "chosen", "rejected"):
                value = getattr(signal, field, None)
                if value:
                    texts += [s.strip() for s in re.split(r"(?<=[.!?])\s+", value) if len(s.strip()) > 20]
        texts += [item.post, item.chosen, item.rejected]
    return list(dict.fromkeys(texts))


def _bench_signals(path: Path):
    """Comparison signals (x, y_w, y_l) of a test set: short, real, one per item."""
    from alignment.signals import parse_signal, read_testset

    return [parse_signal({"kind": "comparison", "post": i.post, "chosen": i.chosen, "rejected": i.rejected,
                          "id": f"bench-{i.id}"}) for i in read_testset(path)]


def register_bench(bench_app: typer.Typer) -> None:
    @bench_app.command("memory")
    def bench_memory_cmd(
        ctx: typer.Context,
        sizes: Annotated[str, typer.Option(help="record counts for one user")] = "1000,10000,100000",
        queries: Annotated[int, typer.Option(help="queries per size")] = 50,
        pool: Annotated[int, typer.Option(help="texts embedded for real; bigger stores mix their vectors")] = 2000,
        embed_all: Annotated[bool, typer.Option("--embed-all", help="embed every record (slow on a CPU)")] = False,
        texts: Annotated[Path, typer.Option(help="test set whose texts become records")] = DEV_PREFS_TESTSET,
    ) -> None:
        """Memory write throughput, query p50/p95 and recall@10 of chroma vs exact cosine."""
        from app.cli import settings_from
        from memory.bench import bench_memory, format_table
        from memory.embeddings import get_embedder

        settings = settings_from(ctx)
        cfg = settings.memory
        embedder = get_embedder(cfg.embedding_model, cfg.embedding_device, cfg.embedding_batch_size)
        rows, info = bench_memory(_ints(sizes), _bench_texts(texts), embedder, queries=queries, pool_size=pool,
                                  embed_all=embed_all, progress=lambda m: typer.echo(m, err=True))
        typer.echo(format_table(rows, info))

    @bench_app.command("prefs")
    def bench_prefs_cmd(
        ctx: typer.Context,
        histories: Annotated[str, typer.Option(help="past-signal counts")] = "8,32,128",
        new: Annotated[int, typer.Option(help="new signals per update")] = 4,
        max_new_tokens: Annotated[int, typer.Option(help="decode budget of both runs")] = 48,
        signals: Annotated[Path, typer.Option(help="test set whose (x, y_w, y_l) become signals")] = DEV_PREFS_TESTSET,
    ) -> None:
        """Streaming update vs full re-inference: prompt tokens and wall time, as ratios."""
        from alignment.bench_prefs import bench_prefs, format_table
        from alignment.preference_inference import InferenceConfig
        from app.cli import settings_from
        from app.models import engine_for

        engine = engine_for(settings_from(ctx), "preference")
        rows = bench_prefs(engine, _bench_signals(signals), _ints(histories), new,
                           InferenceConfig(max_new_tokens=max_new_tokens),
                           progress=lambda m: typer.echo(m, err=True))
        typer.echo(format_table(rows, engine, max_new_tokens))
