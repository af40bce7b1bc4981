"""Training-test fixtures: a PrefEval root in the original layout (two topics, two preferences, three forms)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

PREFS = {
    "food": [("I strictly avoid spicy food because of a sensitive stomach.", "What should I cook tonight?",
              "A mild vegetable risotto.", ["A fiery Sichuan hot pot.", "A spicy Thai curry."]),
             ("I dislike seafood and will not eat it under any circumstances.", "Where should we eat in Lisbon?",
              "A classic steakhouse downtown.", ["A famous sardine grill.", "An oyster bar by the river."])],
    "music": [("I avoid electronic music.", "Any concerts this weekend?", "An acoustic folk evening.",
               ["A techno night at the club.", "An EDM festival."]),
              ("I prefer vinyl records over streaming.", "How should I listen to a new album?",
               "Buy the vinyl pressing.", ["Stream it on your phone.", "Download the MP3s."])],
}


#: what the user wrote when choosing (PrefEval's ``user_selection`` says why, in passing)
WHY = {prefs[0]: why for prefs, why in zip(
    [p for topic in PREFS.values() for p in topic],
    ["The other options are way too spicy for my stomach.", "The seafood places are a no for me.",
     "The electronic options don't appeal to me.", "I'd rather hold a physical record than stream."])}


def fake_prefeval(root: Path) -> Path:
    """A PrefEval root in the original layout: two topics, two preferences, all three forms."""
    for topic, prefs in PREFS.items():
        explicit, choice, persona = [], [], []
        for pref, question, good, bad in prefs:
            explicit.append({"preference": pref, "question": question, "explanation": "-"})
            choice.append({"preference": pref, "question": question, "explanation": "-", "implicit_query": question,
                           "options": [good, *bad], "aligned_op": good,
                           "conversation": {"query": question, "assistant_options": f"1. {good} 2. {bad[0]}",
                                            "user_selection": f"I'll go with option 1. {WHY[pref]}",
                                            "assistant_acknowledgment": "ok"}})
            persona.append({"preference": pref, "question": question, "explanation": "-", "persona": "a teacher",
                            "conversation": {"0": {"user": "I teach history at a middle school.", "assistant": "Nice!"},
                                             "1": {"user": f"Planning a trip. By the way, {pref[0].lower()}{pref[1:]}",
                                                   "assistant": "Noted."},
                                             "2": {"user": "What board games suit a class of twelve?", "assistant": "Try Codenames."}}})
        for sub, data in (("explicit_preference", explicit), ("implicit_preference/choice-based", choice),
                          ("implicit_preference/persona-driven", persona)):
            (root / sub).mkdir(parents=True, exist_ok=True)
            (root / sub / f"{topic}.json").write_text(json.dumps(data), encoding="utf-8")
    return root


def write_fixture_dataset(out_dir: Path, raw: list[dict]) -> dict:
    """``training.pref_build.write_dataset`` with the card computed as `cdra train prefs data` does (word counts)."""
    from alignment.preference_inference import InferenceConfig
    from training.pref_build import data_card, write_dataset
    from training.pref_data import PrefRecord
    from training.pref_rewards import GoldScorer

    records = [PrefRecord.model_validate(r) for r in raw]
    card = data_card(records, lambda t: len(t.split()), InferenceConfig(), GoldScorer(), {"source": "fixture"})
    return write_dataset(out_dir, raw, card)


@pytest.fixture(scope="session")
def write_pref_dataset():
    return write_fixture_dataset


@pytest.fixture(scope="session")
def make_prefeval():
    return fake_prefeval


@pytest.fixture(scope="session")
def prefeval_root(tmp_path_factory) -> Path:
    return fake_prefeval(tmp_path_factory.mktemp("prefeval"))
