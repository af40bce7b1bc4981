"""`cdra prefs show|retrieve|add|edit|delete|forget|export|import|infer|build-testset --user NAME` over the
vector memory and the preference inferrer, and `cdra bench memory|prefs|recall|extraction`. Thin: the work is
in memory/ and alignment/."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Annotated

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


def _print_statements(statements, memory=None) -> None:
    """Each statement with why it is believed: the quoted words (or signals and reasoning), and its history."""
    from memory.evidence import evidence_text, explain, history_text

    if not statements:
        typer.echo("(no preferences stored)")
        return
    turns, runs = (memory.turns(), memory.inferences()) if memory is not None else ([], [])
    evidence = explain(statements, turns, runs)
    for s in statements:
        how = "stated" if s.explicit else "inferred"
        typer.echo(f"{s.id}  [{s.stance} | {s.dimension} | {how} | conf {s.confidence:.2f} | v{s.version}]  {s.text}")
        if s.applies_to:
            typer.echo(f"{'':18}applies to: {', '.join(s.applies_to)}")
        for line in evidence_text(evidence[s.id]) or ["evidence: -"]:
            typer.echo(f"{'':18}{line}")
        typer.echo(f"{'':18}history: {history_text(s) or 'created ' + s.created}")


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
    memory = _user_memory(ctx, user)
    statements = memory.list_preferences()
    if as_json:
        from memory.evidence import explain

        evidence = explain(statements, memory.turns(), memory.inferences())
        for s in statements:
            typer.echo(json.dumps({**s.model_dump(), "evidence_quoted": [e.model_dump() for e in evidence[s.id]]},
                                  ensure_ascii=False))
    else:
        _print_statements(statements, memory)


@prefs_app.command("retrieve")
def retrieve_cmd(
    ctx: typer.Context,
    user: User,
    query: Annotated[str, typer.Argument(help="a message, as the user would send it")],
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object instead of text")] = False,
    token_budget: Annotated[int | None, typer.Option("--budget", min=1, help="tokens (default: memory.token_budget)")] = None,
) -> None:
    """What the assistant would put into its prompt for QUERY from USER's memory, with scores (and what
    it leaves out, and why)."""
    from app.cli import settings_from
    from memory.retrieval import turn_line

    settings = settings_from(ctx)
    if not query.strip():
        raise CdraError("the query is empty: give the message to retrieve for")
    mem = settings.memory
    budget = token_budget or mem.token_budget
    # the very call the assistant makes for a turn (app.assistant.Assistant.retrieve)
    retrieval = _user_memory(ctx, user).retrieve(query, top_k=mem.top_k, token_budget=budget)
    if as_json:
        typer.echo(json.dumps({
            "user": user, "query": query, "token_budget": budget, "tokens": retrieval.tokens,
            "prompt_lines": retrieval.as_prompt_lines(),
            "statements": [s.as_dict() for s in retrieval.considered],
            "turns": [{"score": round(score, 4), "line": turn_line(turn), **turn} for turn, score in retrieval.turns],
        }, ensure_ascii=False, indent=2))
        return
    used = [s for s in retrieval.considered if s.used]
    typer.echo(f"{len(used)} of {len(retrieval.considered)} statement(s) and {len(retrieval.turns)} past turn(s) "
               f"for the prompt: {retrieval.tokens}/{budget} tokens")
    if not retrieval.considered and not retrieval.turns:
        typer.echo("(nothing stored for this user)")
    for s in retrieval.considered:
        mark = "+" if s.used else "-"
        typer.echo(f"{mark} {s.score:5.2f}  {s.statement.text}  [{s.why}; cosine {s.cosine:.2f}, situations "
                   f"{s.situation:.2f}{'; ' + ', '.join(s.statement.applies_to) if s.statement.applies_to else ''}]")
    for turn, score in retrieval.turns:
        typer.echo(f"+ {score:5.2f}  {turn_line(turn)}")
    if retrieval.as_prompt_lines():
        typer.echo("\nprompt lines:")
        for line in retrieval.as_prompt_lines():
            typer.echo(f"  - {line}")


@prefs_app.command("add")
def add_cmd(ctx: typer.Context, user: User,
            text: Annotated[str, typer.Argument(help='in your words, e.g. "I\'m allergic to cats"')]) -> None:
    """Add preferences in USER's own words (read by the explicit extractor; else stored as written)."""
    from alignment.explicit_extraction import extract_explicit
    from alignment.preferences import Evidence, PreferenceStatement, now_iso

    said = f"cli-{now_iso()}"  # each `prefs add` is its own evidence: saying it again adds to it, it never replaces it
    found = extract_explicit(text, said)
    if not found:
        stance = "avoids" if any(w in text.lower() for w in ("avoid", "don't", "do not", "never", "dislike")) else "prefers"
        found = [PreferenceStatement(text=text.strip(), stance=stance, origin="user_edit", confidence=1.0,
                                     evidence=[said], sources=[Evidence(id=said, quote=text.strip(), time=now_iso(),
                                                                        origin="user_edit")])]
    ids = _user_memory(ctx, user).add_preferences(found)
    typer.echo(f"stored {len(ids)} statement(s): " + "; ".join(s.text for s in found))


@prefs_app.command("edit")
def edit_cmd(
    ctx: typer.Context,
    user: User,
    statement_id: Annotated[str, typer.Argument(help="the id shown by `cdra prefs show`")],
    text: Annotated[str | None, typer.Option("--text", help="new sentence")] = None,
    stance: Annotated[str | None, typer.Option("--stance", help="prefers | avoids")] = None,
    dimension: Annotated[str | None, typer.Option("--dimension", help="e.g. style, privacy, health")] = None,
    confidence: Annotated[float | None, typer.Option("--confidence", min=0.0, max=1.0)] = None,
) -> None:
    """Correct one statement; the old wording is never brought back by inference."""
    if text is None and stance is None and dimension is None and confidence is None:
        raise CdraError("nothing to change: give --text, --stance, --dimension or --confidence")
    updated = _user_memory(ctx, user).edit_preference(statement_id, text=text, stance=stance, dimension=dimension,
                                                      confidence=confidence)
    _print_statements([updated], _user_memory(ctx, user))


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
               out: Annotated[Path | None, typer.Option("--out", "-o", help="file (default: stdout)")] = None) -> None:
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
    from alignment.records import load_json_file

    data = load_json_file(file)  # not UTF-8, not JSON, nested too deeply: FormatError file:line
    try:
        counts = _user_memory(ctx, user).import_(data)
    except FormatError as exc:
        raise FormatError(f"{file}: {exc}") from None
    typer.echo(f"imported into {user}: " + ", ".join(f"{v} {k}" for k, v in counts.items()))


@prefs_app.command("infer")
def infer_cmd(
    ctx: typer.Context,
    user: User,
    signals: Annotated[Path, typer.Option("--signals", "-s", help="behavioral signals, JSONL (formats.md)")],
    max_new_tokens: Annotated[int, typer.Option(help="tokens for the reasoning and the description")] = 384,
    retries: Annotated[int, typer.Option(help="extra samples when the output breaks the format")] = 2,
    seed: Annotated[int, typer.Option(help="seed of the sampled retries and votes (the first output is greedy)")] = 0,
    votes: Annotated[int | None, typer.Option(min=0, max=16, help="sampled outputs that vote on each statement (default: settings inference.votes)")] = None,
    min_support: Annotated[int | None, typer.Option(min=1, help="votes a statement needs to be stored (default: settings inference.min_support)")] = None,
) -> None:
    """Infer USER's preferences from a signal file and store them (explicit statements first, at once)."""
    from pydantic import ValidationError

    from alignment.explicit_extraction import explicit_from_signals
    from alignment.preferences import PreferenceDescription
    from alignment.signals import read_signals
    from app.cli import settings_from
    from app.models import preference_inferrer
    from app.settings import InferenceSettings
    from memory.vector_store import VectorMemory

    parsed = read_signals(signals)  # the whole file is validated before anything is written
    settings = settings_from(ctx)
    overrides = {k: v for k, v in {"votes": votes, "min_support": min_support}.items() if v is not None}
    try:
        inference = InferenceSettings.model_validate(settings.inference.model_dump() | overrides)
    except ValidationError as exc:
        raise CdraError(f"--votes/--min-support: {exc.errors()[0]['msg']}") from None
    settings = settings.model_copy(update={"inference": inference})
    memory = VectorMemory(settings.memory, settings.chroma_dir).for_user(user)
    explicit = explicit_from_signals(parsed)
    if explicit:
        memory.add_preferences(explicit)
        typer.echo(f"stored {len(explicit)} explicit statement(s) from the signals")
    inferrer = preference_inferrer(settings, max_new_tokens=max_new_tokens, max_retries=retries, seed=seed)
    previous = PreferenceDescription(statements=memory.list_preferences())
    typer.echo(f"inferring from {len(parsed)} signal(s) with {inferrer.engine.description} …", err=True)
    result = inferrer.infer(parsed, previous, suppressed=memory.suppressed())
    summary = {"signals": len(parsed), "failed": result.failed, "r_format": result.r_format,
               "attempts": result.attempts, "statements": len(result.new_statements), "unsupported": result.unsupported,
               "error": result.error or "", "model": inferrer.engine.version, "source": str(signals)}
    memory.record_inference(summary, raw=result.raw)
    if result.failed:
        raise CdraError(f"preference inference failed after {result.attempts} attempt(s): {result.error} "
                        "(recorded in the inference log; nothing was stored as a preference)")
    from alignment.preferences import with_inference_sources

    stored = memory.add_preferences(with_inference_sources(result.new_statements, parsed, result.reasoning))
    unsupported = f", {result.unsupported} dropped as too few of {settings.inference.votes} votes stated them" \
        if settings.inference.votes else ""
    typer.echo(f"R_format={result.r_format:.0f}; {len(result.new_statements)} statement(s) inferred{unsupported}, "
               f"{len(stored)} stored or updated")
    _print_statements([s for s in memory.list_preferences() if s.id in set(stored)], memory)


@prefs_app.command("build-testset")
def build_testset_cmd(
    prefeval: Annotated[Path, typer.Option("--prefeval", help="PrefEval benchmark_dataset/ directory")] = DEFAULT_PREFEVAL,
    out: Annotated[Path, typer.Option("--out", "-o", help="test set JSONL to write")] = DEV_PREFS_TESTSET,
    signals_from: Annotated[str, typer.Option(help="persona | choice | both: where the signals E come from")] = "persona",
    limit_per_topic: Annotated[int | None, typer.Option(help="at most this many items per topic")] = None,
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

    @bench_app.command("recall")
    def bench_recall_cmd(
        ctx: typer.Context,
        prefeval: Annotated[Path, typer.Option("--prefeval", help="PrefEval benchmark_dataset/ directory")] = DEFAULT_PREFEVAL,
        per_topic: Annotated[int, typer.Option(help="items per topic (0 = all)")] = 10,
        ks: Annotated[str, typer.Option("--k", help="how many other preferences each user states")] = "0,15,50",
        seed: Annotated[int, typer.Option(help="sampling seed")] = 0,
        show_misses: Annotated[int, typer.Option(help="print this many missed items per K")] = 5,
        ablation: Annotated[bool, typer.Option("--ablation", help="also compare retrieval variants at the largest K")] = False,
    ) -> None:
        """Recall of a stated preference for a question it bears on, among K others, within the token budget;
        prompt tokens; false merges of distinct allergies, medications, places, people."""
        from app.cli import settings_from
        from memory.bench_recall import RecallItem, format_ablation, format_recall, run_recall_bench
        from memory.embeddings import get_embedder
        from training.prefeval import load_prefeval, prefeval_topics

        cfg = settings_from(ctx).memory
        records = [RecallItem(r.topic, r.preference, r.question) for topic in prefeval_topics(prefeval)
                   for r in load_prefeval(prefeval, "explicit", topic)]
        try:
            k_values = [int(x) for x in ks.split(",") if x.strip()]
        except ValueError:
            raise CdraError(f"--k: expected comma-separated counts such as 0,15,50, got {ks!r}") from None
        if not k_values or min(k_values) < 0:
            raise CdraError(f"--k: expected counts >= 0, got {ks!r}")
        embedder = get_embedder(cfg.embedding_model, cfg.embedding_device, cfg.embedding_batch_size)
        rows, merges, same, variants = run_recall_bench(
            records, cfg, per_topic=per_topic or None, ks=k_values, seed=seed, embedder=embedder,
            progress=lambda m: typer.echo(m, err=True), ablation=ablation)
        typer.echo(format_recall(rows, merges, same, cfg.token_budget))
        if variants:
            typer.echo("\n" + format_ablation(variants))
        for row in rows:
            for preference, question in row.misses[:show_misses]:
                typer.echo(f"missed at K={row.k}: {preference!r} for {question!r}")

    @bench_app.command("extraction")
    def bench_extraction_cmd(
        prefeval: Annotated[Path, typer.Option("--prefeval", help="PrefEval benchmark_dataset/ directory")] = DEFAULT_PREFEVAL,
        show: Annotated[int, typer.Option(help="print this many false positives and missed conversations")] = 5,
        per_topic: Annotated[int, typer.Option(help="records per topic and form (0 = all)")] = 0,
    ) -> None:
        """How much of what users say about themselves the explicit extractor reads (PrefEval explicit
        sentences and persona conversations), and its false positives on questions and third-person text."""
        from memory.bench_extraction import PersonaCase, format_extraction, measure_extraction
        from memory.embeddings import get_embedder
        from training.prefeval import load_prefeval, prefeval_topics

        topics = prefeval_topics(prefeval)

        def load(form: str) -> list:
            return [r for t in topics for r in load_prefeval(prefeval, form, t)[: per_topic or None]]

        explicit, choice = load("explicit"), load("implicit-choice")
        persona = [PersonaCase(r.preference, [turn.user for turn in r.turns]) for r in load("implicit-persona")]
        report = measure_extraction([r.preference for r in explicit], persona,
                                    [r.conversation.user_selection for r in choice],
                                    [r.question for r in explicit] + [r.implicit_query for r in choice], get_embedder())
        typer.echo(format_extraction(report))
        for text, found in report.examples_fp[:show]:
            typer.echo(f"false positive? {text[:120]!r} -> {found}")
        for preference in report.examples_persona_missed[:show]:
            typer.echo(f"persona conversation not read: {preference!r}")

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
