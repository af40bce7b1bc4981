"""The cognitive council's Tree of Thoughts (CDRA §2.2, Appendix E): (P, q) -> root-to-leaf paths τ_i.

Level by level, each council persona proposes next thoughts at every frontier node (``Step k: …``, the
declared ``council_thought`` format); the teacher's value function V scores each thought (``VALUE: x`` in
[0, 1], ``council_value``); both are enforced by constrained decoding where the engine can and read strictly,
so only an unconstrained teacher leaves anything unreadable (read leniently, counted). Thoughts under the
threshold, unreadable, empty or repeated are pruned, the best ``breadth`` survive. Every leaf path gets a
final answer. A level's proposals (and its values, and all answers) are one batched generation;
every sampled call carries a seed derived from the build seed, the scenario id and the level (or the
node path, when not batched), so the same scenario always grows the same tree.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace

from alignment.engines.base import Completion, Conversation, Engine, SamplingParams
from alignment.errors import CdraError
from alignment.formats import FormatParseError, OutputFormat, Reading, council_thought, council_value
from alignment.prompts import render
from alignment.prompts.council import ANSWER_PROMPT, PERSONAS, PROPOSE_PROMPT, VALUE_PROMPT
from alignment.prompts.prm import format_previous_steps
from alignment.steps import MAX_STEPS, format_response, parse_response
from training.scenarios import Scenario, derive_seed

PRUNE_REASONS = ("threshold", "unparseable_value", "beam", "duplicate", "empty", "unparseable_thought")


@dataclass
class CouncilConfig:
    r"""
    Configuration of the council's Tree of Thoughts.

    Parameters that control the search:
        personas (`tuple[str, ...]`, defaults to all five of the paper):
            Council members that propose thoughts at every node (names from
            `alignment.prompts.council.PERSONAS`: Sociologist, Psychologist, Pragmatist, Pedagogue, Contrarian).
        depth (`int`, defaults to `3`):
            Reasoning steps T of a full path (at most `alignment.steps.MAX_STEPS`); the answer follows.
        breadth (`int`, defaults to `3`):
            Frontier nodes kept per level after pruning (ToT's BFS beam width); the best by V survive.
        branching (`int`, defaults to `1`):
            Thoughts each persona proposes at each node (samples per proposal prompt).
        value_threshold (`float`, defaults to `0.4`):
            Thoughts whose value V (in [0, 1]) is below this are pruned.
        min_depth (`int`, defaults to `1`):
            A node whose children were all pruned ends a path only if it is at least this deep.
        max_paths (`int` or `None`, defaults to `None`):
            Keep at most this many paths per scenario (highest mean V first); `None` keeps all.

    Parameters that control generation (temperature 0 is greedy; sampled calls are seeded):
        thought_temperature (`float`, defaults to `0.8`):
            Proposals are sampled so that personas and branches differ.
        step_tokens (`int`, defaults to `48`):
            Most tokens of one thought: the bound of the ``council_thought`` format (``Step k: …``, one line);
            a thought that reaches it is trimmed to its last full sentence.
        thought_max_new_tokens (`int`, defaults to `0`):
            Generation budget of one thought; raised to the format's longest output when smaller.
        value_samples (`int`, defaults to `3`):
            V is the mean of this many readable ``VALUE: x`` replies (ToT samples its value prompt too).
        value_temperature (`float`, defaults to `0.7`):
            Temperature of the value replies; with `value_samples=1` and `0.0`, V is greedy.
        value_retries (`int`, defaults to `1`):
            Extra attempts for thoughts with no readable value; then the thought is pruned and counted.
        value_retry_temperature (`float`, defaults to `0.7`):
            Temperature of those retries (a greedy retry would only repeat the same reply).
        value_max_new_tokens (`int`, defaults to `0`):
            Budget of one value reply; raised to the ``council_value`` format's longest output when smaller.
        answer_temperature (`float`, defaults to `0.0`):
            The final answer of a path is greedy by default.
        answer_max_new_tokens (`int`, defaults to `192`):
            Budget of the final answer.

    Parameters that control batching:
        batched (`bool`, defaults to `True`):
            One generation call per level (all nodes and personas), one for the level's values and one for
            all answers. `False` sends one call per node (the `cdra bench data` baseline).
    """

    personas: tuple[str, ...] = tuple(PERSONAS)
    depth: int = 3
    breadth: int = 3
    branching: int = 1
    value_threshold: float = 0.4
    min_depth: int = 1
    max_paths: int | None = None
    thought_temperature: float = 0.8
    step_tokens: int = 48
    thought_max_new_tokens: int = 0
    value_samples: int = 3
    value_temperature: float = 0.7
    value_retries: int = 1
    value_retry_temperature: float = 0.7
    value_max_new_tokens: int = 0
    answer_temperature: float = 0.0
    answer_max_new_tokens: int = 192
    batched: bool = True

    def __post_init__(self) -> None:
        self.personas = tuple(self.personas)
        unknown = [p for p in self.personas if p not in PERSONAS]
        if unknown or not self.personas:
            raise CdraError(f"unknown council persona(s) {unknown or '(none given)'}: choose from {', '.join(PERSONAS)}")
        if not 1 <= self.depth <= MAX_STEPS:
            raise CdraError(f"depth must be between 1 and {MAX_STEPS} (the policy's step limit), not {self.depth}")
        if not 1 <= self.min_depth <= self.depth:
            raise CdraError(f"min_depth must be between 1 and depth={self.depth}, not {self.min_depth}")
        if self.breadth < 1 or self.branching < 1 or self.value_samples < 1:
            raise CdraError("breadth, branching and value_samples must be at least 1")
        if not 0.0 <= self.value_threshold <= 1.0:
            raise CdraError(f"value_threshold must lie in [0, 1], not {self.value_threshold}")
        if self.branching > 1 and self.thought_temperature <= 0:
            raise CdraError("branching > 1 needs thought_temperature > 0 (greedy samples would be identical)")
        if self.step_tokens < 4:
            raise CdraError(f"step_tokens must be at least 4, not {self.step_tokens}")

    def formats(self) -> list[OutputFormat]:
        """The declared outputs the council reads: a thought per depth, then the value (a build's fingerprint)."""
        return [*(council_thought(k, self.step_tokens) for k in range(1, self.depth + 1)), council_value()]


# -- the tree ---------------------------------------------------------------------------------------------
@dataclass
class ThoughtNode:
    id: str  # "r" for the root, then child indices: "r.0", "r.0.2", ...
    parent: str | None
    depth: int
    persona: str | None
    thought: str
    value: float | None = None
    value_samples: list[float] = field(default_factory=list)
    pruned: str | None = None  # one of PRUNE_REASONS
    children: list[str] = field(default_factory=list)


@dataclass
class ReasoningPath:
    node_ids: list[str]
    steps: list[str]
    personas: list[str]
    values: list[float]
    answer: str = ""

    @property
    def response(self) -> str:
        return format_response(self.steps, self.answer)


@dataclass
class TreeStats:
    proposed: int = 0
    pruned: dict[str, int] = field(default_factory=lambda: {r: 0 for r in PRUNE_REASONS})
    value_parse_failures: int = 0  # unreadable value replies (samples; only from an unconstrained teacher)
    value_retries: int = 0  # thoughts sent again for a value
    thought_parse_failures: int = 0  # proposals not in the council_thought format (unconstrained teacher)
    repaired: int = 0  # thoughts and values only the lenient reader accepted (unconstrained teacher)
    empty_answers: int = 0  # leaves dropped because the answer was empty
    model_calls: int = 0
    conversations: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0

    @property
    def pruned_total(self) -> int:
        return sum(self.pruned.values())


@dataclass
class ThoughtTree:
    scenario_id: str
    nodes: dict[str, ThoughtNode]
    paths: list[ReasoningPath]
    stats: TreeStats

    def to_dict(self) -> dict:
        return {
            "scenario_id": self.scenario_id,
            "nodes": [asdict(n) for n in self.nodes.values()],
            "paths": [asdict(p) for p in self.paths],
            "stats": asdict(self.stats),
        }

    @classmethod
    def from_dict(cls, data: dict) -> ThoughtTree:
        nodes = {n["id"]: ThoughtNode(**n) for n in data["nodes"]}
        return cls(data["scenario_id"], nodes, [ReasoningPath(**p) for p in data["paths"]], TreeStats(**data["stats"]))


# -- reading the council's outputs -------------------------------------------------------------------------
_ANSWER_LABEL = re.compile(r"^\s*[>*#-]*\s*\**\s*(?:final\s+)?(?:answer|reply|response)\s*\**\s*[:.-]\s*\**\s*", re.IGNORECASE)
_SENTENCE_END = re.compile(r"[.!?)](?=\s|$)")


def _trim_cut_off(text: str, cut_off: bool) -> str:
    """A reply that ran out of tokens ends at its last full sentence, when that keeps most of it."""
    if not cut_off:
        return text
    ends = [m.end() for m in _SENTENCE_END.finditer(text)]
    if ends and ends[-1] >= 0.5 * len(text):
        return text[: ends[-1]]
    return text


def read_output(engine: Engine, fmt: OutputFormat, text: str) -> Reading | None:
    """``fmt``'s reading of one of ``engine``'s outputs (strict where the engine enforced the format, lenient and
    marked ``repaired`` otherwise), or ``None`` when it is not in the format."""
    try:
        return engine.read_format(fmt, text)
    except FormatParseError:
        return None


def clean_thought(step: str) -> str:
    """A thought as the tree keeps it, from the ``council_thought`` format's step text: quotes and runs of
    spaces removed, and one that stops mid-sentence (it reached the format's bound) trimmed to its last
    full sentence when that keeps most of it. Returns "" under three words (the node is pruned as empty)."""
    text = " ".join(step.split()).strip().strip('"').strip()
    text = _trim_cut_off(text, cut_off=not text.endswith((".", "!", "?", ")", '"')))
    return text if len(text.split()) >= 3 else ""


def clean_answer(text: str, steps: Sequence[str], cut_off: bool = False) -> str:
    """The final answer without labels, such that ``parse_response(format_response(steps, answer))``
    gives back exactly these steps and this answer (lines that look like labels are folded)."""
    text = _ANSWER_LABEL.sub("", text.strip())
    text = _trim_cut_off(text.strip(), cut_off).strip()
    if not text:
        return ""
    parsed = parse_response(format_response(steps, text))
    if parsed.steps != [s.strip() for s in steps] or parsed.answer != text:
        text = " ".join(text.split())
    return text


def _normalized(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


# -- growing a tree -----------------------------------------------------------------------------------------
class _Council:
    """One scenario's search: holds the engine, the counters and the seeding rule."""

    def __init__(self, engine: Engine, scenario: Scenario, config: CouncilConfig, seed: int) -> None:
        self.engine, self.scenario, self.config, self.seed = engine, scenario, config, seed
        self.stats = TreeStats()
        self.nodes: dict[str, ThoughtNode] = {"r": ThoughtNode("r", None, 0, None, "")}

    def generate(self, convs: list[Conversation], params: SamplingParams, kind: str, level: object,
                 keys: list[str]) -> list[list[Completion]]:
        """Batched: one call seeded by (scenario, kind, level). Not batched: one call per conversation,
        seeded by (scenario, kind, node key). Either way the same tree comes back on a rerun."""
        if not convs:
            return []
        if self.config.batched:
            calls = [(convs, derive_seed(self.seed, self.scenario.id, kind, level))]
        else:
            calls = [([c], derive_seed(self.seed, self.scenario.id, kind, level, k)) for c, k in zip(convs, keys)]
        out: list[list[Completion]] = []
        for batch, seed in calls:
            out += self.engine.generate(batch, replace(params, seed=seed))
            self.stats.model_calls += 1
            self.stats.conversations += len(batch)
        self.stats.completion_tokens += sum(c.completion_tokens for group in out for c in group)
        return out

    def steps_to(self, node: ThoughtNode) -> list[str]:
        steps = []
        while node.parent is not None:
            steps.append(node.thought)
            node = self.nodes[node.parent]
        return steps[::-1]

    # each level: propose, value, prune
    def propose(self, frontier: list[ThoughtNode], depth: int) -> list[ThoughtNode]:
        cfg, s = self.config, self.scenario
        requests = [(node, persona) for node in frontier for persona in cfg.personas]
        convs = [
            render(PROPOSE_PROMPT, persona=persona, focus=PERSONAS[persona], preference=s.preference, query=s.query,
                   previous_steps=format_previous_steps(self.steps_to(node)), step_number=depth)
            for node, persona in requests
        ]
        fmt = council_thought(depth, cfg.step_tokens)
        params = SamplingParams(max_new_tokens=cfg.thought_max_new_tokens, temperature=cfg.thought_temperature,
                                n=cfg.branching, format=fmt)
        outputs = self.generate(convs, params, "propose", depth, [f"{n.id}/{p}" for n, p in requests])
        children: list[ThoughtNode] = []
        seen: dict[str, set[str]] = {}
        for (parent, persona), completions in zip(requests, outputs):
            for completion in completions:
                reading = read_output(self.engine, fmt, completion.text)
                thought = clean_thought(reading.value) if reading else ""
                self.stats.thought_parse_failures += reading is None
                self.stats.repaired += bool(reading and reading.repaired)
                child = ThoughtNode(f"{parent.id}.{len(parent.children)}", parent.id, depth, persona, thought)
                parent.children.append(child.id)
                self.nodes[child.id] = child
                key, siblings = _normalized(thought), seen.setdefault(parent.id, set())
                if reading is None:
                    child.pruned = "unparseable_thought"
                elif not thought:
                    child.pruned = "empty"
                elif key in siblings:
                    child.pruned = "duplicate"
                siblings.add(key)
                children.append(child)
        self.stats.proposed += len(children)
        return children

    def value(self, nodes: list[ThoughtNode], depth: int) -> None:
        cfg, s = self.config, self.scenario
        fmt = council_value()
        pending = nodes
        for attempt in range(1 + cfg.value_retries):
            if not pending:
                break
            if attempt:
                self.stats.value_retries += len(pending)
            convs = [
                render(VALUE_PROMPT, preference=s.preference, query=s.query,
                       previous_steps=format_previous_steps(self.steps_to(self.nodes[n.parent or "r"])),
                       step=n.thought)
                for n in pending
            ]
            temperature = cfg.value_temperature if attempt == 0 else cfg.value_retry_temperature
            params = SamplingParams(max_new_tokens=cfg.value_max_new_tokens, temperature=temperature,
                                    n=cfg.value_samples if temperature > 0 else 1, stop=("\n",), format=fmt)
            outputs = self.generate(convs, params, "value", f"{depth}/{attempt}", [n.id for n in pending])
            still: list[ThoughtNode] = []
            for node, completions in zip(pending, outputs):
                readings = [read_output(self.engine, fmt, c.text) for c in completions]
                readable = [r.value for r in readings if r is not None]
                self.stats.value_parse_failures += len(readings) - len(readable)
                self.stats.repaired += sum(1 for r in readings if r is not None and r.repaired)
                if readable:
                    node.value_samples = readable
                    node.value = round(sum(readable) / len(readable), 4)
                else:
                    still.append(node)
            pending = still
        for node in pending:
            node.pruned = "unparseable_value"

    def prune(self, children: list[ThoughtNode]) -> list[ThoughtNode]:
        cfg = self.config
        survivors = []
        for child in children:
            if child.pruned is None and child.value is not None and child.value < cfg.value_threshold:
                child.pruned = "threshold"
            if child.pruned is None:
                survivors.append(child)
        survivors.sort(key=lambda n: -(n.value or 0.0))  # stable: ties keep proposal order
        for child in survivors[cfg.breadth :]:
            child.pruned = "beam"
        for child in children:
            if child.pruned:
                self.stats.pruned[child.pruned] += 1
        return survivors[: cfg.breadth]

    def leaves(self) -> list[ThoughtNode]:
        def alive(n: ThoughtNode) -> bool:
            return n.pruned is None

        found = [
            n for n in self.nodes.values()
            if n.parent is not None and alive(n) and n.depth >= self.config.min_depth
            and not any(alive(self.nodes[c]) for c in n.children)
        ]
        return found

    def paths(self, leaves: list[ThoughtNode]) -> list[ReasoningPath]:
        paths, seen = [], set()
        for leaf in leaves:
            chain, node = [], leaf
            while node.parent is not None:
                chain.append(node)
                node = self.nodes[node.parent]
            chain.reverse()
            key = tuple(_normalized(n.thought) for n in chain)
            if key in seen:
                continue
            seen.add(key)
            paths.append(ReasoningPath([n.id for n in chain], [n.thought for n in chain],
                                       [n.persona or "" for n in chain], [n.value or 0.0 for n in chain]))
        paths.sort(key=lambda p: (-len(p.steps), -sum(p.values) / len(p.values)))
        if self.config.max_paths is not None:
            paths = paths[: self.config.max_paths]
        return paths

    def answer(self, paths: list[ReasoningPath]) -> list[ReasoningPath]:
        cfg, s = self.config, self.scenario
        convs = [render(ANSWER_PROMPT, preference=s.preference, query=s.query,
                        steps=format_previous_steps(p.steps)) for p in paths]
        params = SamplingParams(max_new_tokens=cfg.answer_max_new_tokens, temperature=cfg.answer_temperature)
        outputs = self.generate(convs, params, "answer", "leaves", [p.node_ids[-1] for p in paths])
        answered = []
        for path, completions in zip(paths, outputs):
            c = completions[0]
            path.answer = clean_answer(c.text, path.steps, cut_off=c.finish_reason == "length")
            if path.answer:
                answered.append(path)
            else:
                self.stats.empty_answers += 1
        return answered


def grow_tree(engine: Engine, scenario: Scenario, config: CouncilConfig, seed: int = 0) -> ThoughtTree:
    """Search one scenario's reasoning tree and return it with its answered, de-duplicated paths.

    Engine errors (an unreachable endpoint, a prompt too long) propagate: the caller decides
    whether the scenario is retried later. Unusable model replies never raise: they are pruned and counted.
    """
    start = time.perf_counter()
    council = _Council(engine, scenario, config, seed)
    frontier = [council.nodes["r"]]
    for depth in range(1, config.depth + 1):
        children = council.propose(frontier, depth)
        council.value([c for c in children if c.pruned is None], depth)
        frontier = council.prune(children)
        if not frontier:
            break
    paths = council.answer(council.paths(council.leaves()))
    council.stats.seconds = round(time.perf_counter() - start, 3)
    return ThoughtTree(scenario.id, council.nodes, paths, council.stats)
