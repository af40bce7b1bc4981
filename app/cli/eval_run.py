"""`cdra eval run | compare | import-prefeval | import-aloe` and `cdra bench eval`: thin commands over
app/reports.py, training/prefeval_alignment.py, alignment/aloe_sim.py and alignment/bench_eval.py."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from alignment.errors import CdraError

_REPO = Path(__file__).resolve().parents[2]
DEV_TESTSET = _REPO / "data" / "dev" / "alignment_dev.jsonl"
DEV_PERSONAS = _REPO / "data" / "dev" / "aloe_personas.jsonl"

# Judge role overrides, shared by `run` and `compare`.
JudgeBackend = Annotated[Optional[str], typer.Option("--judge-backend", help="default | transformers | vllm | openai (else settings' judge role)")]
JudgeBaseUrl = Annotated[Optional[str], typer.Option("--judge-base-url", help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1")]
JudgeModel = Annotated[Optional[str], typer.Option("--judge-model", help="model name at the endpoint")]
JudgePath = Annotated[Optional[str], typer.Option("--judge-path", help="local model directory (transformers/vllm)")]
JudgeKeyEnv = Annotated[Optional[str], typer.Option("--judge-api-key-env", help="environment variable holding the API key")]
JudgeConcurrency = Annotated[Optional[int], typer.Option("--judge-max-concurrency", help="parallel requests to an endpoint judge")]
JudgeTokens = Annotated[int, typer.Option("--judge-max-new-tokens", help="tokens for the judge's rationale + verdict")]
JudgeBatch = Annotated[int, typer.Option("--judge-batch-size", help="judgments per engine call")]
JudgeLogprobs = Annotated[Optional[bool], typer.Option("--judge-logprobs/--no-judge-logprobs",
                                                       help="read verdicts from option probabilities (default: local judges yes, endpoints no)")]


def _with_judge(settings, backend, base_url, model, path, api_key_env, max_concurrency):
    """Settings whose judge role carries the command-line overrides (unset flags keep the configured value)."""
    updates = {k: v for k, v in {"backend": backend, "base_url": base_url, "model": model, "path": path,
                                  "api_key_env": api_key_env, "max_concurrency": max_concurrency}.items() if v is not None}
    if not updates:
        return settings
    if "backend" not in updates and (base_url or model):
        updates["backend"] = "openai"
    from alignment.engines import ModelSpec

    spec = ModelSpec.model_validate({**settings.judge.model_dump(), **updates})
    return settings.model_copy(update={"judge": spec})


def _judge_config(max_new_tokens: int, batch_size: int, logprobs: Optional[bool], seed: int):
    from alignment.judges import JudgeConfig

    return JudgeConfig(max_new_tokens=max_new_tokens, batch_size=batch_size, use_logprobs=logprobs, seed=seed)


def _split(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


def register_eval(eval_app: typer.Typer) -> None:
    @eval_app.command("run")
    def run_cmd(
        ctx: typer.Context,
        methods: Annotated[str, typer.Option("--methods", "-m", help="comma list: zero-shot, few-shot, cot, sft, rft, "
                                             "grpo-outcome, grpo-process, cdra, policy; NAME=VERSION|PATH|base|serving")] = "zero-shot,cot",
        testset: Annotated[Optional[Path], typer.Option("--testset", "-t", help="alignment test set (JSONL or datasets dir)")] = None,
        out: Annotated[Optional[Path], typer.Option("--out", "-o", help="report folder (default data_dir/reports/eval/<testset>)")] = None,
        memory: Annotated[str, typer.Option("--memory", help="memory conditions: with, without, or with,without")] = "with",
        memory_store: Annotated[str, typer.Option("--memory-store", help="prompt (preference as retrieved lines) | chroma")] = "prompt",
        limit: Annotated[Optional[int], typer.Option("--limit", "-n", help="only the first N items", min=1)] = None,
        max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="tokens per answer", min=1)] = 256,
        temperature: Annotated[float, typer.Option("--temperature", min=0.0)] = 0.0,
        batch_size: Annotated[int, typer.Option("--batch-size", help="prompts per generation call", min=1)] = 8,
        judge_backend: JudgeBackend = None,
        judge_base_url: JudgeBaseUrl = None,
        judge_model: JudgeModel = None,
        judge_path: JudgePath = None,
        judge_api_key_env: JudgeKeyEnv = None,
        judge_max_concurrency: JudgeConcurrency = None,
        judge_max_new_tokens: JudgeTokens = 96,
        judge_batch_size: JudgeBatch = 16,
        judge_logprobs: JudgeLogprobs = None,
        judge_sees: Annotated[str, typer.Option("--judge-sees", help="reply (text after 'Answer:') | full")] = "reply",
        aloe_personas: Annotated[Optional[Path], typer.Option("--aloe-personas", help="ALOE personas (formats.md JSONL or ALOE's datasets/ dir)")] = None,
        aloe_turns: Annotated[int, typer.Option("--aloe-turns", min=1, max=10)] = 10,
        aloe_limit: Annotated[Optional[int], typer.Option("--aloe-limit", help="only the first N personas", min=1)] = None,
        aloe_user_role: Annotated[str, typer.Option("--aloe-user-role", help="role whose model plays the user")] = "teacher",
        aloe_user_max_new_tokens: Annotated[int, typer.Option("--aloe-user-max-new-tokens", min=1)] = 64,
        aloe_human: Annotated[bool, typer.Option("--aloe-human", help="add rated human ALOE sessions from the session log")] = False,
        prefs_testset: Annotated[Optional[Path], typer.Option("--prefs-testset", help="preference-inference test set: adds Acc_jud / Acc_gen")] = None,
        bootstrap: Annotated[int, typer.Option("--bootstrap", help="bootstrap resamples for the 95% CIs", min=100)] = 2000,
        seed: Annotated[int, typer.Option("--seed")] = 0,
        cache: Annotated[Optional[Path], typer.Option("--cache", help="cache file (default <out>/cache.sqlite)")] = None,
        dataset_name: Annotated[Optional[str], typer.Option("--dataset-name", help="label of the Table 1 block")] = None,
        progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
    ) -> None:
        """Answer the test set with every method, judge like the CDRA paper, write the report folder."""
        from alignment.methods import parse_methods
        from app.cli import settings_from
        from app.reports import EvalRunConfig, run_eval, table1

        settings = _with_judge(settings_from(ctx), judge_backend, judge_base_url, judge_model, judge_path,
                               judge_api_key_env, judge_max_concurrency)
        if testset is None:
            if not DEV_TESTSET.is_file():
                raise CdraError("no --testset given and the dev set data/dev/alignment_dev.jsonl is missing")
            testset = DEV_TESTSET
        if judge_sees not in ("reply", "full"):
            raise CdraError(f"--judge-sees must be reply or full, not {judge_sees!r}")
        out = out or settings.data_dir / "reports" / "eval" / Path(testset).stem
        config = EvalRunConfig(
            testset=testset, methods=parse_methods(methods), out_dir=out, conditions=_split(memory),
            memory_store=memory_store, limit=limit, max_new_tokens=max_new_tokens, temperature=temperature,
            batch_size=batch_size, judge=_judge_config(judge_max_new_tokens, judge_batch_size, judge_logprobs, seed),
            judge_sees=judge_sees, aloe_personas=aloe_personas, aloe_turns=aloe_turns, aloe_limit=aloe_limit,
            aloe_user_role=aloe_user_role, aloe_user_max_new_tokens=aloe_user_max_new_tokens, aloe_human=aloe_human,
            prefs_testset=prefs_testset, n_boot=bootstrap, seed=seed, cache_path=cache, dataset_name=dataset_name,
            progress=progress,
        )
        result = run_eval(settings, config)
        typer.echo(table1(result.rows, dataset_name or Path(testset).stem))
        s = result.stats
        typer.echo(f"model calls: {s.generate_calls} generate, {s.score_calls} score; {s.cache_hits} cached results reused")
        typer.echo(f"report: {result.out_dir / 'report.md'}")

    @eval_app.command("compare")
    def compare_cmd(
        ctx: typer.Context,
        a: Annotated[str, typer.Argument(help="report folder, or a policy to run: VERSION, NAME=VERSION or NAME=PATH")],
        b: Annotated[str, typer.Argument(help="report folder, or a policy to run (the candidate: does B beat A?)")],
        method_a: Annotated[Optional[str], typer.Option("--method-a", help="row of A when A has several methods")] = None,
        method_b: Annotated[Optional[str], typer.Option("--method-b", help="row of B when B has several methods")] = None,
        memory: Annotated[Optional[str], typer.Option("--memory", help="with | without (default: with if present)")] = None,
        testset: Annotated[Optional[Path], typer.Option("--testset", "-t", help="test set for policies given as versions")] = None,
        out: Annotated[Optional[Path], typer.Option("--out", "-o", help="where runs for versions go (default data_dir/reports/compare)")] = None,
        limit: Annotated[Optional[int], typer.Option("--limit", "-n", min=1)] = None,
        max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1)] = 256,
        pairwise: Annotated[bool, typer.Option("--pairwise", help="also judge A vs B head to head (both orders)")] = False,
        judge_backend: JudgeBackend = None,
        judge_base_url: JudgeBaseUrl = None,
        judge_model: JudgeModel = None,
        judge_path: JudgePath = None,
        judge_api_key_env: JudgeKeyEnv = None,
        judge_max_concurrency: JudgeConcurrency = None,
        judge_max_new_tokens: JudgeTokens = 96,
        judge_batch_size: JudgeBatch = 16,
        judge_logprobs: JudgeLogprobs = None,
        bootstrap: Annotated[int, typer.Option("--bootstrap", min=100)] = 5000,
        seed: Annotated[int, typer.Option("--seed")] = 0,
        progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
    ) -> None:
        """Does B beat A? Paired bootstrap and exact McNemar tests on the per-item indicators."""
        from app.cli import settings_from
        from app.reports import compare_reports, format_comparison, pairwise_compare

        settings = _with_judge(settings_from(ctx), judge_backend, judge_base_url, judge_model, judge_path,
                               judge_api_key_env, judge_max_concurrency)
        judge = _judge_config(judge_max_new_tokens, judge_batch_size, judge_logprobs, seed)
        dirs = []
        for side, spec in (("A", a), ("B", b)):
            path = Path(spec)
            if (path / "indicators.jsonl").is_file():
                dirs.append(path)
                continue
            if path.exists():
                raise CdraError(f"{path} is not a report folder (no indicators.jsonl)")
            dirs.append(_run_version(settings, spec, side, testset, out, limit, max_new_tokens, judge, seed, progress))
        rows, info = compare_reports(dirs[0], dirs[1], method_a, method_b, memory, n_boot=bootstrap, seed=seed)
        typer.echo(format_comparison(rows, info), nl=False)
        if pairwise:
            result = pairwise_compare(settings, dirs[0], dirs[1], info, judge, progress)
            typer.echo(f"head to head ({result['items']} items, both orders): B wins {result['b_wins']}, A wins "
                       f"{result['a_wins']}, ties {result['ties']}, undecided {result['undecided']}; B win rate "
                       f"{100 * result['b_win_rate']:.1f}% of decided pairs, sign test p = {result['p_sign']:.3f}")

    @eval_app.command("import-prefeval")
    def import_prefeval_cmd(
        root: Annotated[Path, typer.Option("--root", help="PrefEval's benchmark_dataset/ directory")],
        out: Annotated[Path, typer.Option("--out", "-o", help="alignment test set to write (JSONL)")],
        forms: Annotated[str, typer.Option("--forms", help="explicit, implicit-choice, implicit-persona")] = "explicit,implicit-choice,implicit-persona",
        topics: Annotated[Optional[str], typer.Option("--topics", help="comma list (default: every topic found)")] = None,
        per_topic: Annotated[Optional[int], typer.Option("--per-topic", help="sample this many per (form, topic)", min=1)] = None,
        max_history_chars: Annotated[Optional[int], typer.Option("--max-history-chars", help="skip longer implicit conversations")] = None,
        seed: Annotated[int, typer.Option("--seed")] = 0,
    ) -> None:
        """PrefEval (original layout, any topic) -> formats.md alignment test set."""
        from alignment.methods import write_jsonl_atomic
        from training.prefeval_alignment import import_prefeval, item_record

        items = import_prefeval(root, forms=_split(forms), topics=_split(topics) if topics else None,
                                per_topic=per_topic, seed=seed, max_history_chars=max_history_chars)
        write_jsonl_atomic(out, (item_record(it) for it in items))
        by_form: dict[str, int] = {}
        for it in items:
            by_form[it.extras["form"]] = by_form.get(it.extras["form"], 0) + 1
        typer.echo(f"wrote {len(items)} items to {out} ({', '.join(f'{k}: {v}' for k, v in by_form.items())})")

    @eval_app.command("import-aloe")
    def import_aloe_cmd(
        directory: Annotated[Path, typer.Argument(help="ALOE's datasets/ directory (profile_eval.jsonl, personality_eval.jsonl)")],
        out: Annotated[Path, typer.Option("--out", "-o", help="personas to write (formats.md JSONL)")],
        personalities: Annotated[int, typer.Option("--personalities-per-profile", min=1)] = 5,
        split: Annotated[str, typer.Option("--split", help="eval | train")] = "eval",
    ) -> None:
        """ALOE's profiles x personalities -> formats.md ALOE personas."""
        from alignment.aloe_sim import import_aloe_dataset
        from alignment.methods import write_jsonl_atomic

        personas = import_aloe_dataset(directory, personalities, split)
        write_jsonl_atomic(out, (p.model_dump() for p in personas))
        typer.echo(f"wrote {len(personas)} personas to {out}")


def _run_version(settings, spec: str, side: str, testset, out, limit, max_new_tokens, judge, seed, progress) -> Path:
    """Evaluate one policy for `compare` when it is given as a version or path instead of a report folder."""
    from alignment.methods import parse_methods
    from app.reports import EvalRunConfig, run_eval

    methods = parse_methods(spec if "=" in spec else f"policy={spec}")
    if testset is None:
        if not DEV_TESTSET.is_file():
            raise CdraError("comparing versions needs --testset")
        testset = DEV_TESTSET
    root = out or settings.data_dir / "reports" / "compare"
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in spec)
    config = EvalRunConfig(testset=testset, methods=methods, out_dir=root / f"{side}-{safe}", limit=limit,
                           max_new_tokens=max_new_tokens, judge=judge, seed=seed, progress=progress,
                           cache_path=root / "cache.sqlite")
    return run_eval(settings, config).out_dir


def register_bench(bench_app: typer.Typer) -> None:
    @bench_app.command("eval")
    def bench_eval_cmd(
        ctx: typer.Context,
        judgments: Annotated[int, typer.Option("--judgments", "-n", help="judgments per mode", min=1)] = 16,
        max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1)] = 32,
        batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 16,
        judge_backend: JudgeBackend = None,
        judge_base_url: JudgeBaseUrl = None,
        judge_model: JudgeModel = None,
        judge_path: JudgePath = None,
        judge_api_key_env: JudgeKeyEnv = None,
        judge_max_concurrency: JudgeConcurrency = None,
    ) -> None:
        """Judgments per second: batched judging vs one engine call per judgment, side by side."""
        from alignment.bench_eval import format_bench, run_bench
        from app.cli import settings_from
        from app.reports import resolve_role

        settings = _with_judge(settings_from(ctx), judge_backend, judge_base_url, judge_model, judge_path,
                               judge_api_key_env, judge_max_concurrency)
        judge = resolve_role(settings, "judge")
        rows = run_bench(judge.loader(settings)(), judge.key, DEV_TESTSET, n=judgments, max_new_tokens=max_new_tokens,
                         batch_size=batch_size)
        typer.echo(format_bench(rows), nl=False)
