"""`cdra bench generate`: load time, peak memory and decode tokens/s of a role's engine, side by side
with llama.cpp (llama-cpp-python, all cores) on the same packaged GGUF when it is installed.

Decoding is greedy on fixed prompts that invite long answers; tokens/s counts only tokens actually
produced (a row that stops early adds nothing), and includes the short prompt's prefill.

The llama.cpp anchor (``llamacpp_anchor``, also used by `cdra bench chat`) runs in a process of its own,
with llama.cpp's default environment: this process has torch loaded and ``OMP_WAIT_POLICY=PASSIVE`` set,
which slowed llama.cpp's OpenMP builds 3x (issue 11) and is not what llama.cpp does on its own.
"""

from __future__ import annotations

import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from alignment.engines.base import Engine, SamplingParams
from alignment.engines.spec import ModelSpec

PROMPTS = [
    "Write a long story about a dragon who learns to cook.",
    "Explain in detail how a bicycle works, part by part.",
    "Describe a week-long trip through Italy, day by day.",
    "Write a detailed guide to starting a vegetable garden.",
    "Tell the history of the printing press at length.",
    "Explain how to train for a first marathon, week by week.",
    "Write a long letter from a sailor to his family.",
    "Describe everything that happens in a busy kitchen at dinner time.",
]


@dataclass
class Row:
    measure: str
    ours: str
    reference: str = ""
    ratio: str = ""


@dataclass
class BenchReport:
    engine: str
    reference: str
    rows: list[Row] = field(default_factory=list)
    #: raw numbers, for scripts and tests
    numbers: dict[str, float] = field(default_factory=dict)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 if os.uname().sysname != "Darwin" else peak / 2**20


def _median_rate(run: Callable[[], int], repeats: int) -> tuple[float, int]:
    """Median tokens/s over ``repeats`` runs of ``run`` (which returns the tokens it produced)."""
    rates, tokens = [], 0
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        tokens = run()
        rates.append(tokens / max(time.perf_counter() - start, 1e-9))
    return statistics.median(rates), tokens


def _conversation(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


def bench_generate(
    spec: ModelSpec,
    models_dir: Path,
    version: str | None = None,
    new_tokens: int = 64,
    repeats: int = 3,
    batch_sizes: tuple[int, ...] = (1, 8),
    llamacpp: bool = True,
    cold: bool = False,
    progress: Callable[[str], None] = lambda _msg: None,
) -> BenchReport:
    """Measure one engine (``spec`` resolved, never ``auto``) and, if available, llama.cpp beside it."""
    import torch  # noqa: F401  (imported before timing, so the load time is the model's alone)
    import transformers  # noqa: F401

    from alignment.engines.default_model import _CACHE_SUBDIR, ensure_default_model, packaged_gguf_path
    from alignment.engines.factory import build_engine

    report = BenchReport(engine="", reference="")
    models_dir = Path(models_dir)
    is_default = spec.backend in ("default", "auto")
    if is_default and (cold or not (models_dir / _CACHE_SUBDIR / "model.safetensors").is_file()):
        with tempfile.TemporaryDirectory() as tmp:
            target = Path(tmp) if cold else models_dir
            progress(f"cold conversion of the packaged GGUF into {target} ...")
            start = time.perf_counter()
            ensure_default_model(target)
            seconds = time.perf_counter() - start
        report.rows.append(Row("cold start: GGUF -> safetensors conversion (once)", f"{seconds:.1f} s"))
        report.numbers["cold_conversion_s"] = seconds
        ensure_default_model(models_dir)

    progress("loading the model ...")
    start = time.perf_counter()
    engine = build_engine(spec, models_dir, version=version, cache=False)
    load_s = time.perf_counter() - start
    report.engine = engine.description
    report.numbers["load_s"] = load_s

    params = SamplingParams(max_new_tokens=new_tokens, temperature=0.0)
    engine.generate([_conversation(PROMPTS[0])], SamplingParams(max_new_tokens=4))  # warm-up
    ours: dict[int, float] = {}
    for batch in batch_sizes:
        progress(f"decoding {new_tokens} tokens at batch {batch} x{repeats} ...")
        convs = [_conversation(PROMPTS[i % len(PROMPTS)]) for i in range(batch)]
        rate, produced = _median_rate(lambda convs=convs: _produced(engine, convs, params), repeats)
        ours[batch] = rate
        report.numbers[f"tokens_per_s_batch{batch}"] = rate
        report.numbers[f"tokens_batch{batch}"] = produced
    ours_rss = peak_rss_mb()
    report.numbers["peak_rss_mb"] = ours_rss
    engine.close()

    ref: dict[str, float] = {}
    if llamacpp and importlib.util.find_spec("llama_cpp") is not None:
        progress("llama.cpp on the packaged GGUF, in a process of its own ...")
        ref = llamacpp_anchor(packaged_gguf_path(), new_tokens, repeats)
        report.reference = f"llama.cpp {ref.pop('version_str', '')} alone in its own process on " \
                           f"{packaged_gguf_path().name}, {int(ref['threads'])} threads"
        report.numbers.update({f"llamacpp_{k}": v for k, v in ref.items()})
    elif llamacpp:
        report.reference = "llama.cpp not installed (pip install .[bench])"

    def ratio(a: float, b: float | None) -> str:
        return f"{a / b:.2f}x" if b else ""

    report.rows.append(Row("load (cached model)", f"{load_s:.2f} s",
                           f"{ref['load_s']:.2f} s" if "load_s" in ref else "",
                           ratio(ref.get("load_s", 0.0), load_s) if "load_s" in ref else ""))
    for batch in batch_sizes:
        reference = ref.get("tokens_per_s") if batch == 1 else None
        report.rows.append(Row(
            f"decode tokens/s, batch {batch} ({int(report.numbers[f'tokens_batch{batch}'])} tokens)",
            f"{ours[batch]:.1f}", f"{reference:.1f}" if reference else "", ratio(ours[batch], reference)))
    report.rows.append(Row("peak RSS of the process", f"{ours_rss:.0f} MB",
                           f"{ref['peak_rss_mb']:.0f} MB" if "peak_rss_mb" in ref else ""))
    return report


def _produced(engine: Engine, convs: list, params: SamplingParams) -> int:
    return sum(c[0].completion_tokens for c in engine.generate(convs, params))


def llamacpp_anchor(gguf: Path, new_tokens: int = 128, repeats: int = 3, threads: int | None = None,
                    timeout_s: float = 900.0, max_run_s: float = 60.0, context_tokens: int = 0) -> dict[str, float]:
    """llama.cpp alone: a fresh process that imports only llama-cpp-python, with the environment minus the
    OpenMP settings the cdra process makes for torch; greedy decoding of ``new_tokens`` on ``gguf`` (a run that
    takes longer than ``max_run_s``, as on a CPU crowded by other processes, is measured on what it decoded).
    ``context_tokens``: the prompt is padded to about this many tokens, because decoding slows as the context
    grows (attention reads every cached position): a chat turn's ~450-token prompt decodes ~40 % slower than
    a one-line one, so serving is compared with llama.cpp at the same context length.
    Returns load_s, tokens_per_s (with the prompt's prefill), decode_tokens_per_s (first to last token),
    prefill_tokens_per_s, prompt_tokens, tokens, threads, peak_rss_mb, version_str."""
    from alignment.engines.cpu_threads import usable_cores

    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "GOMP_", "KMP_"))}
    job = {"gguf": str(gguf), "new_tokens": new_tokens, "repeats": repeats, "threads": threads or usable_cores(),
           "max_run_s": max_run_s, "context_tokens": context_tokens}
    try:
        done = subprocess.run([sys.executable, "-m", "alignment.engines.bench", json.dumps(job)], env=env,
                              capture_output=True, text=True, timeout=timeout_s, check=True)
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(f"the llama.cpp anchor failed: {exc.stderr[-500:]}") from exc
    return json.loads(done.stdout.strip().splitlines()[-1])


def _own_peak_rss_mb() -> float:
    """This process's peak RSS since its exec (VmHWM; getrusage's maxrss keeps the parent's across exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return peak_rss_mb()


def _anchor_main(job: dict) -> dict:
    """The anchor's own process (``python -m alignment.engines.bench JOB``)."""
    import llama_cpp

    threads = int(job["threads"])
    context = int(job.get("context_tokens", 0))
    start = time.perf_counter()
    llm = llama_cpp.Llama(model_path=job["gguf"], n_ctx=max(1024, context + int(job["new_tokens"]) + 64),
                          n_threads=threads, n_threads_batch=threads, verbose=False)
    load_s = time.perf_counter() - start
    messages = _conversation(PROMPTS[0])
    if context:
        filler = llm.tokenize(" ".join(PROMPTS * (1 + context // 60)).encode(), add_bos=False)
        messages = [{"role": "system", "content": llm.detokenize(filler[: max(0, context - 40)]).decode(
            "utf-8", errors="ignore")}, *messages]

    def run(tokens: int) -> tuple[int, float, float, int, float]:
        """(tokens, tokens/s with prefill, decode tokens/s, prompt tokens, prefill tokens/s) of one greedy run."""
        llm.reset()  # no prefix reuse between runs: each one prefills its whole prompt
        t0 = time.perf_counter()
        first, n, prompt = None, 0, 0
        for chunk in llm.create_chat_completion(messages=messages, max_tokens=tokens,
                                                temperature=0.0, top_k=1, stream=True):
            if chunk["choices"][0]["delta"].get("content"):
                n += 1
                if first is None:
                    first, prompt = time.perf_counter(), llm.n_tokens - 1
            if time.perf_counter() - t0 > float(job.get("max_run_s", 60.0)):
                break
        end = time.perf_counter()
        return (n, n / max(end - t0, 1e-9), (n - 1) / max(end - (first or end), 1e-9), prompt,
                prompt / max((first or end) - t0, 1e-9))

    run(8)  # warm-up
    runs = [run(int(job["new_tokens"])) for _ in range(max(1, int(job["repeats"])))]
    llm.close()
    return {"load_s": load_s, "tokens_per_s": statistics.median(r[1] for r in runs),
            "decode_tokens_per_s": statistics.median(r[2] for r in runs), "tokens": runs[-1][0],
            "prefill_tokens_per_s": statistics.median(r[4] for r in runs), "prompt_tokens": runs[-1][3],
            "threads": threads, "peak_rss_mb": _own_peak_rss_mb(), "version_str": getattr(llama_cpp, "__version__", "")}


def report_table(report: BenchReport):
    """The report as a rich table: ours, the reference, and the ratio (higher is better for us)."""
    from rich.table import Table

    table = Table("measure", "ours", "llama.cpp", "ratio", title=f"cdra bench generate: {report.engine}",
                  caption=(report.reference + "; " if report.reference else "")
                  + "ratio = ours / llama.cpp for tokens/s, llama.cpp / ours for load time (higher is better)")
    for row in report.rows:
        table.add_row(row.measure, row.ours, row.reference, row.ratio)
    return table


if __name__ == "__main__":
    print(json.dumps(_anchor_main(json.loads(sys.argv[1]))))
