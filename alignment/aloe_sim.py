"""ALOE-style automatic multi-turn evaluation: a simulated user plays a persona for up to 10 turns with
the assistant, and a judge that sees the persona rates every assistant turn 1-5 (CDRA Table 2).

All personas advance together, so each turn is three batched calls (user messages, assistant replies,
ratings), each cached per rendered prompt: an interrupted run resumes, a re-run costs nothing.
Personas come from formats.md JSONL, a datasets directory, or ALOE's own ``datasets/`` directory.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from alignment.engines.base import Engine, Message, SamplingParams
from alignment.errors import CdraError, FormatError
from alignment.judges import CallStats, EvalCache, Judge, aloe_turn_request
from alignment.methods import ItemContext, Style, cached_generate, conversation, visible_reply
from alignment.prompts import render
from alignment.prompts.aloe import OPENING_CUE, REPLY_CUE, SIMULATED_USER_PROMPT
from alignment.records import json_records, jsonl_values

MAX_TURNS = 10


class Persona(BaseModel):
    """formats.md "ALOE-style personas": who the person is, how they talk, what they care about."""

    model_config = ConfigDict(extra="allow")

    id: str = Field(..., min_length=1)
    profile: str = Field(..., min_length=1)
    personality: str = ""
    hidden_preferences: list[str] = Field(default_factory=list)
    opening: str = ""


def _aloe_lines(path: Path) -> list[str]:
    """ALOE's profile/personality files hold one JSON string per line."""
    texts = []
    for where, value in jsonl_values(path):  # bad bytes or JSON: FormatError file:line
        if not isinstance(value, str) or not value.strip():
            raise FormatError(f"{where}: expected a non-empty JSON string per line (ALOE layout)")
        texts.append(value.strip())
    return texts


def import_aloe_dataset(directory: str | Path, personalities_per_profile: int = 5, split: str = "eval") -> list[Persona]:
    """ALOE's original ``datasets/`` layout: ``profile_eval.jsonl`` x the first k ``personality_eval.jsonl``
    lines, as ALOE's own evaluation pairs them (``split="train"`` reads ``profile.jsonl``/``personality.jsonl``).
    ALOE has no hidden-preference lists: the judge sees profile and personality only."""
    directory = Path(directory)
    suffix = "_eval" if split == "eval" else ""
    profiles_path, personalities_path = directory / f"profile{suffix}.jsonl", directory / f"personality{suffix}.jsonl"
    for p in (profiles_path, personalities_path):
        if not p.is_file():
            raise CdraError(f"{p} not found: ALOE's layout is datasets/profile_eval.jsonl + datasets/personality_eval.jsonl")
    profiles, personalities = _aloe_lines(profiles_path), _aloe_lines(personalities_path)[:personalities_per_profile]
    return [Persona(id=f"aloe/{i}/{j}", profile=profile, personality=personality)
            for i, profile in enumerate(profiles) for j, personality in enumerate(personalities)]


def read_personas(path: str | Path) -> list[Persona]:
    """Personas from formats.md JSONL, a datasets directory, or ALOE's original directory."""
    path = Path(path)
    if path.is_dir() and (path / "profile_eval.jsonl").is_file():
        return import_aloe_dataset(path)
    personas: list[Persona] = []
    for where, obj in json_records(path):
        if not isinstance(obj, dict):
            raise FormatError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        try:
            personas.append(Persona.model_validate(obj))
        except ValidationError as exc:
            first = exc.errors()[0]
            raise FormatError(f"{where}: {'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from None
    if not personas:
        raise FormatError(f"{path}: no personas")
    return personas


@dataclass
class SimConfig:
    """Conversation length and decoding of the simulated user and the assistant."""

    turns: int = MAX_TURNS
    user_max_new_tokens: int = 64
    assistant_max_new_tokens: int = 256
    temperature: float = 0.0
    batch_size: int = 8
    seed: int = 0


@dataclass
class SimTurn:
    persona_id: str
    method: str
    turn: int
    user: str
    response: str  # the assistant's full output
    reply: str  # what the simulated user sees (after "Answer:")
    rating: int | None
    judgment: dict = field(default_factory=dict)
    error: str | None = None


@dataclass
class Participant:
    """A model taking part: ``key`` identifies it in the cache, ``engine`` loads it on first need."""

    key: str
    engine: Callable[[], Engine]


_STAGE = re.compile(r"\*[^*\n]*\*")
_LABEL = re.compile(r"^\s*(?:user|me|person|human)\s*:\s*", re.IGNORECASE)


def clean_user_message(text: str) -> str:
    """Drop stage directions (*smiles*), a leading speaker label and wrapping quotes, as ALOE does."""
    text = _LABEL.sub("", _STAGE.sub("", text)).strip()
    if len(text) >= 2 and text[0] == text[-1] == '"':
        text = text[1:-1].strip()
    return " ".join(text.split())


def _user_view(persona: Persona, turns: Sequence[tuple[str, str]]) -> list[Message]:
    """The simulated user's prompt: its own messages as assistant turns, the chatbot's as user turns."""
    hidden = "; ".join(persona.hidden_preferences) or "(nothing in particular)"
    if not turns:
        convo, cue = [], OPENING_CUE
    else:
        convo = [{"role": "user", "content": OPENING_CUE}]
        for i, (user, reply) in enumerate(turns):
            convo.append({"role": "assistant", "content": user})
            if i < len(turns) - 1:
                convo.append({"role": "user", "content": reply})
        cue = f"{turns[-1][1]}\n\n{REPLY_CUE}"
    return render(SIMULATED_USER_PROMPT, profile=persona.profile, personality=persona.personality or "(not given)",
                  hidden_preferences=hidden, conversation=convo, cue=cue)


def simulate(
    personas: Sequence[Persona],
    *,
    method: str,
    style: Style,
    assistant: Participant,
    user: Participant,
    judge: Judge,
    cache: EvalCache | None,
    stats: CallStats,
    config: SimConfig | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[SimTurn]:
    """Run every persona's conversation with one method; one SimTurn per (persona, turn)."""
    config = config or SimConfig()
    if not 1 <= config.turns <= MAX_TURNS:
        raise CdraError(f"ALOE conversations have 1..{MAX_TURNS} turns, not {config.turns}")
    user_params = SamplingParams(max_new_tokens=config.user_max_new_tokens, temperature=config.temperature, seed=config.seed)
    reply_params = SamplingParams(max_new_tokens=config.assistant_max_new_tokens, temperature=config.temperature, seed=config.seed)
    dialogues: list[list[tuple[str, str]]] = [[] for _ in personas]
    out: list[SimTurn] = []
    for turn in range(1, config.turns + 1):
        messages = _next_user_messages(personas, dialogues, turn, user, cache, stats, user_params, config, method)
        histories = [_assistant_history(d) for d in dialogues]
        convs = [conversation(style, ItemContext(history=h), m) for h, m in zip(histories, messages)]
        answers = cached_generate(convs, reply_params, model_key=assistant.key, engine=assistant.engine, cache=cache,
                                  stats=stats, metas=[{"item_id": p.id, "method": method} for p in personas],
                                  batch_size=config.batch_size)
        replies = [visible_reply(a.text) if a.text is not None else "" for a in answers]
        requests = [
            aloe_turn_request(profile=p.profile, personality=p.personality, hidden_preferences=p.hidden_preferences,
                              message=m, response=r, meta={"item_id": p.id, "method": method, "turn": turn})
            for p, m, r in zip(personas, messages, replies)
        ]
        judgments = judge.run(requests)
        for i, persona in enumerate(personas):
            a, j = answers[i], judgments[i]
            out.append(SimTurn(persona.id, method, turn, messages[i], a.text or "", replies[i],
                               j.verdict if isinstance(j.verdict, int) else None, j.to_record(), a.error or j.error))
            dialogues[i].append((messages[i], replies[i]))
        if progress:
            progress(len(personas))
    return out


def _assistant_history(dialogue: Sequence[tuple[str, str]]) -> list[Message]:
    history: list[Message] = []
    for user_message, reply in dialogue:
        history.append({"role": "user", "content": user_message})
        history.append({"role": "assistant", "content": reply or "..."})
    return history


def _next_user_messages(personas: Sequence[Persona], dialogues: Sequence[Sequence[tuple[str, str]]], turn: int,
                        user: Participant, cache: EvalCache | None, stats: CallStats, params: SamplingParams,
                        config: SimConfig, method: str) -> list[str]:
    messages: list[str | None] = [p.opening.strip() if turn == 1 and p.opening.strip() else None for p in personas]
    todo = [i for i, m in enumerate(messages) if m is None]
    if todo:
        convs = [_user_view(personas[i], dialogues[i]) for i in todo]
        generated = cached_generate(convs, params, model_key=user.key, engine=user.engine, cache=cache, stats=stats,
                                    metas=[{"item_id": personas[i].id, "method": f"simulated-user/{method}"} for i in todo],
                                    batch_size=config.batch_size)
        for i, g in zip(todo, generated):
            messages[i] = clean_user_message(g.text or "") or "..."  # a silent user still takes their turn
    return [m or "..." for m in messages]
