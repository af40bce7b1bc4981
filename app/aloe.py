"""ALOE-style human evaluation sessions (CDRA §3.1): an evaluator role-plays a persona
(formats.md, read by ``alignment.aloe_sim.read_personas``) for up to 10 turns
and rates each answer's alignment 1-5 before the next turn opens. Sessions live in the session log
(mode ``aloe``); they can be paused, resumed and run blind against two policy versions (A/B).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Any

from alignment.aloe_sim import Persona, read_personas  # noqa: F401  (re-exported: the formats.md persona)
from alignment.errors import CdraError
from app.aloe_report import MAX_TURNS, AloeRating
from memory.session_log import SessionLog

ALOE_TURNS = MAX_TURNS


def persona_card(persona: Persona) -> str:
    """What the evaluator sees: who to play and what they secretly care about (Markdown)."""
    parts = [f"**Profile:** {persona.profile}"]
    if persona.personality:
        parts.append(f"**Personality:** {persona.personality}")
    if persona.hidden_preferences:
        parts.append(
            "**Hidden preferences** (never state them outright; rate how well the assistant finds them):\n"
            + "\n".join(f"- {p}" for p in persona.hidden_preferences)
        )
    if persona.opening:
        parts.append(f"**Opening message:** {persona.opening}")
    return "\n\n".join(parts)


def typed_persona(profile: str, personality: str = "", hidden: str = "", opening: str = "") -> Persona:
    """A persona typed into the app: one hidden preference per line."""
    if not profile.strip():
        raise CdraError("describe the persona's profile first (who they are)")
    prefs = [p.strip(" -•\t") for p in hidden.splitlines() if p.strip(" -•\t")]
    digest = hashlib.sha1(f"{profile}\x1f{personality}\x1f{hidden}".encode()).hexdigest()[:8]
    return Persona(
        id=f"typed-{digest}",
        profile=profile.strip(),
        personality=personality.strip(),
        hidden_preferences=prefs,
        opening=opening.strip(),
    )


@dataclass
class AloeTurn:
    turn_id: str
    k: int
    query: str
    answer: str
    rating: int | None
    steps: list[str] = field(default_factory=list)


@dataclass
class AloeState:
    """Everything the ALOE tab shows about one session, rebuilt from the log (so resume is exact)."""

    session_id: str
    status: str
    persona: Persona
    arm: str  # "A" / "B" in a blind A/B session, else ""
    blind: bool
    policy_version: str | None  # the requested version (None = whatever serves)
    turns: list[AloeTurn]

    @property
    def k(self) -> int:
        return len(self.turns)

    @property
    def awaiting_rating(self) -> AloeTurn | None:
        return self.turns[-1] if self.turns and self.turns[-1].rating is None else None

    @property
    def can_send(self) -> bool:
        return self.status == "active" and self.awaiting_rating is None and self.k < ALOE_TURNS

    @property
    def model_label(self) -> str:
        if self.blind:
            return f"Model {self.arm} (blind)"
        return self.policy_version or "serving policy"

    def history(self) -> list[dict[str, str]]:
        out: list[dict[str, str]] = []
        for t in self.turns:
            out += [{"role": "user", "content": t.query}, {"role": "assistant", "content": t.answer}]
        return out


class AloeSessions:
    """ALOE session bookkeeping on top of the session log; every call is scoped to the evaluator."""

    def __init__(self, log: SessionLog, rng: random.Random | None = None) -> None:
        self.log = log
        self.rng = rng or random.Random()

    def start(
        self,
        user_id: str,
        persona: Persona,
        version_a: str | None = None,
        version_b: str | None = None,
        blind: bool = False,
    ) -> AloeState:
        """New session. With two versions and ``blind``, the arm with fewer of this evaluator's sessions
        on this persona is assigned (ties at random), and the UI shows only "Model A/B"."""
        arm, version = "", version_a
        if blind:
            if not version_a or not version_b or version_a == version_b:
                raise CdraError("a blind A/B session needs two different policy versions")
            counts = {"A": 0, "B": 0}
            for s in self.log.sessions(user_id=user_id, mode="aloe"):
                if s["meta"].get("persona", {}).get("id") == persona.id and s["meta"].get("arm") in counts:
                    counts[s["meta"]["arm"]] += 1
            arm = (
                "A"
                if counts["A"] < counts["B"]
                else "B"
                if counts["B"] < counts["A"]
                else self.rng.choice("AB")
            )
            version = version_a if arm == "A" else version_b
        meta = {
            "persona": persona.model_dump(),
            "policy_version": version,
            "arm": arm,
            "blind": blind,
            "versions": {"A": version_a, "B": version_b} if blind else {},
            "k_max": ALOE_TURNS,
        }
        session_id = self.log.start_session(user_id, "aloe", meta)
        return self.state(user_id, session_id)

    def state(self, user_id: str, session_id: str) -> AloeState:
        session = self.log.session(user_id, session_id)
        if session is None or session["mode"] != "aloe":
            raise CdraError("no such ALOE session for you")
        meta = session["meta"]
        turns = [
            AloeTurn(t["turn_id"], i, t["query"], t["answer"], t["rating"], t["reasoning_steps"])
            for i, t in enumerate(self.log.turns(user_id=user_id, session_id=session_id, status="ok"), 1)
        ]
        return AloeState(
            session_id,
            session["status"],
            Persona.model_validate(meta["persona"]),
            meta.get("arm", ""),
            bool(meta.get("blind")),
            meta.get("policy_version"),
            turns,
        )

    def rate(self, user_id: str, session_id: str, rating: int) -> AloeState:
        """Rate the latest unrated turn; the 10th rating finishes the session."""
        state = self.state(user_id, session_id)
        pending = state.awaiting_rating
        if pending is None:
            raise CdraError("there is no answer waiting for a rating: send the next message first")
        self.log.set_rating(user_id, pending.turn_id, int(rating))
        if pending.k >= ALOE_TURNS:
            self.log.update_session(user_id, session_id, status="finished")
        return self.state(user_id, session_id)

    def set_status(self, user_id: str, session_id: str, status: str) -> AloeState:
        """Pause, resume (active) or finish early; a finished session stays finished."""
        state = self.state(user_id, session_id)
        if state.status == "finished" and status != "finished":
            raise CdraError("this session is finished; start a new one")
        if status == "finished" and state.awaiting_rating is not None:
            raise CdraError("rate the last answer before finishing the session")
        self.log.update_session(user_id, session_id, status=status)
        return self.state(user_id, session_id)

    def resumable(self, user_id: str) -> list[dict[str, Any]]:
        """The evaluator's own unfinished sessions, newest first, for the resume picker."""
        sessions = [s for s in self.log.sessions(user_id=user_id, mode="aloe") if s["status"] != "finished"]
        return sorted(sessions, key=lambda s: s["updated"], reverse=True)


def memory_scope(user_id: str, session_id: str) -> str:
    """The memory an ALOE session answers from: the persona's own, never the evaluator's real memory.

    ``__`` cannot occur in a user name (app/users.py), so no real user can own this scope.
    """
    return f"{user_id}__aloe__{session_id[:16]}"


def ratings_from_log(log: SessionLog, include_unfinished: bool = False) -> list[AloeRating]:
    """Human ALOE ratings for the report; the version is the one that actually answered each turn."""
    ratings = []
    for session in log.sessions(mode="aloe"):
        if session["status"] != "finished" and not include_unfinished:
            continue
        turns = log.turns(user_id=session["user_id"], session_id=session["session_id"], status="ok")
        for k, turn in enumerate(turns[:ALOE_TURNS], 1):
            if turn["rating"] is None:
                continue
            version = (
                turn["model_versions"].get("policy") or session["meta"].get("policy_version") or "unknown"
            )
            ratings.append(AloeRating(session["session_id"], version, k, int(turn["rating"]), "human"))
    return ratings
