"""Explicit preferences from what a user writes ("I'm allergic to cats", "don't share my location"):
deterministic first-person patterns, no model call, so a chat turn's statements are stored at once.

Only first-person declaratives count: "store that bob prefers X" names no preference of the speaker and
yields nothing; questions and hypotheticals ("would I like…", "if I hate…") are skipped. The caller
writes the result into the speaking user's own memory, with the turn id as evidence.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from alignment.preferences import PreferenceStatement, Stance, now_iso

_ADV = r"(?:(?:really|strongly|strictly|greatly|absolutely|totally|completely|much|generally|usually|always|" \
       r"truly|highly|definitely|also|just|personally|actually|honestly|very|so|still|do|genuinely|firmly|" \
       r"steadfastly|adamantly|deeply|typically|mostly|tend to|try to|need to|have to|prefer to|want to)\s+)*"
_I = r"\b(?:i|i'm|i am|im|i've|i have)\b"
# where a clause's object ends: punctuation or a conjunction that starts another thought
_END = re.compile(
    r"\s*(?:[.;!?]|,\s*(?:but|so|and i|which|while|though)\b|\s(?:but|so that|and i|because|due to|since|as i|"
    r"as i'm|as they|as it|when|while|whereas|though|although|even if|regardless)\b|,\s*(?:as|even|especially)\b|"
    r"\s[-–—]\s|$)", re.I)
_REASON = re.compile(r"\b(?:due to|because(?: of)?|since|as i'm|as i am)\s+(?P<reason>[^.;!?,]{3,80})", re.I)
# "I'm allergic to wool and avoid using it": the second verb gets its own "I"
_CONTINUATION = re.compile(r"\b(and|but|so)\s+(?=(?:(?:strongly|strictly|also|always|never|only|try to|will)\s+)?"
                           r"(?:avoid|prefer|dislike|only|never|refuse|can't|cannot|will not|won't|love|enjoy|hate)\b)",
                           re.I)
_SKIP_BEFORE = re.compile(r"\b(?:if|whether|do|does|would|should|could|can|might|will|did|unless|used to)\s*$", re.I)

_GERUND_EXCEPTIONS = {"swim": "swimming", "run": "running", "shop": "shopping", "sit": "sitting", "get": "getting",
                      "put": "putting", "plan": "planning", "stop": "stopping", "be": "being", "see": "seeing"}
_NEUTRAL_VERBS = {"know", "think", "understand", "mind", "need", "have", "see", "get", "remember", "care", "believe",
                  "mean", "want", "feel", "say", "expect", "agree", "recall", "usually", "really"}

_HEALTH = re.compile(r"\b(?:allerg|intoleran|gluten|dairy|lactose|nuts?\b|peanut|shellfish|medical|diabet|celiac|"
                     r"phobia|asthma|migraine|pregnan|injur|sugar|caffeine|alcohol|knee|sensitive skin)", re.I)
_DIET = re.compile(r"\b(?:vegan|vegetarian|pescatarian|kosher|halal|meat|pork|beef|seafood|fish|spicy|food|cuisine|"
                   r"eat|eating|diet|dish|dishes|restaurants?|dining)\b", re.I)
_STYLE = re.compile(r"\b(?:concise|jargon|bullet points?|emojis?|technical terms|step[- ]by[- ]step|tone|small talk|"
                    r"explanations?|answers|replies|responses)\b", re.I)
_BUDGET = re.compile(r"\b(?:cheap|expensive|budget|price|afford|luxury|costs?)\b", re.I)
_RISK = re.compile(r"\b(?:danger\w*|extreme|risk\w*|safety|heights|crowds?|crowded|at night|alone)\b", re.I)
_PRIVACY = re.compile(r"\b(?:location|address|privacy|private|personal data|phone number|my name|identity|surveillance)\b",
                      re.I)


def _gerund(verb: str) -> str:
    verb = verb.lower()
    if verb.endswith("ing"):
        return verb
    if verb in _GERUND_EXCEPTIONS:
        return _GERUND_EXCEPTIONS[verb]
    if verb.endswith("ie"):
        return verb[:-2] + "ying"
    if verb.endswith("e") and not verb.endswith(("ee", "ye", "oe")):
        return verb[:-1] + "ing"
    return verb + "ing"


def _dimension(subject: str, default: str = "interests") -> str:
    for name, pattern in (("health", _HEALTH), ("privacy", _PRIVACY), ("style", _STYLE), ("diet", _DIET),
                          ("budget", _BUDGET), ("risk", _RISK)):
        if pattern.search(subject):
            return name
    return default


def _object(text: str, start: int) -> str:
    """The object phrase from ``start`` to the end of its clause."""
    rest = text[start:]
    end = _END.search(rest)
    phrase = rest[: end.start()] if end else rest
    phrase = re.sub(r"^(?:to\s+)?(?:the idea of\s+)?", "", phrase.strip(), flags=re.I)
    return phrase.strip(" ,:\"'").rstrip(".")


def _reason(text: str, start: int) -> str | None:
    match = _REASON.search(text, start)
    return match.group("reason").strip().rstrip(".,") if match else None


# Each pattern: (regex over one sentence, stance, dimension or None = by keyword, base confidence, how to phrase)
_Pattern = tuple[re.Pattern[str], Stance, str | None, float, str]
_PATTERNS: list[_Pattern] = [
    (re.compile(_I + r"\s+" + _ADV + r"(?:(?:severely|very|highly|deathly|extremely|mildly)\s+)?allergic to\s+", re.I),
     "avoids", "health", 0.95, "{obj} (allergy)"),
    (re.compile(_I + r"\s+(?:a|an)\s+(?:(?:severe|strong|mild|serious|bad|terrible|life-threatening|deadly|known)\s+)?"
                r"(?P<obj>[\w-]+(?:\s(?!allerg)[\w-]+){0,3}?)\s+allerg(?:y|ies)\b", re.I),
     "avoids", "health", 0.95, "{obj} (allergy)"),
    (re.compile(_I + r"\s+(?:an?\s+)?(?:\w+\s+)?allerg(?:y|ies)\s+to\s+", re.I), "avoids", "health", 0.95,
     "{obj} (allergy)"),
    (re.compile(_I + r"\s+(?:a|an)\s+(?:severe\s+|strong\s+|mild\s+)?(?P<obj>[\w-]+)\s+intolerance\b", re.I),
     "avoids", "health", 0.95, "{obj} (intolerance)"),
    (re.compile(_I + r"\s+" + _ADV + r"(?P<obj>[\w-]+)\s+intolerant\b", re.I), "avoids", "health", 0.95,
     "{obj} (intolerance)"),
    (re.compile(_I + r"\s+(?:a|an)\s+(?:\w+\s+)?(?:phobia|fear)\s+of\s+", re.I), "avoids", "risk", 0.95, "{obj} (fear)"),
    (re.compile(_I + r"\s+" + _ADV + r"(?:afraid|scared|terrified)\s+of\s+", re.I), "avoids", "risk", 0.9, "{obj} (fear)"),
    (re.compile(_I + r"\s+(?:a\s+|an\s+)?(?:strict\s+)?(?P<obj>vegan|vegetarian|pescatarian|teetotaler|teetotal)\b", re.I),
     "prefers", "diet", 0.95, "{obj} options"),
    (re.compile(_I + r"\s+" + _ADV + r"(?:follow|keep|eat|adhere to|am on|'m on|on|stick to)\s+(?:a\s+|an\s+)?(?:strict(?:ly)?\s+)?"
                r"(?P<obj>[\w-]+(?:\s[\w-]+)?)\s+diet\b", re.I),
     "prefers", "diet", 0.9, "a {obj} diet"),
    # privacy requests: "don't share my location", "never store my address", "keep my name private"
    (re.compile(r"\b(?:please\s+)?(?:do not|don't|dont|never|stop)\s+(?P<verb>share|store|save|remember|record|"
                r"mention|reveal|disclose|track|log|use|sell|publish)\s+(?=my\b|our\b)", re.I),
     "avoids", "privacy", 0.95, "{verb} {obj}"),
    (re.compile(r"\bkeep\s+(?P<obj>my\s+[\w\s]{2,40}?)\s+(?:private|secret|confidential)\b", re.I),
     "avoids", "privacy", 0.95, "sharing {obj}"),
    # answer style requests
    (re.compile(r"\b(?:please\s+)?(?:always\s+)?(?:keep|make)\s+(?:your\s+|the\s+)?(?:answers|replies|responses|"
                r"explanations)\s+(?:\w+\s+)?(?P<obj>short|brief|concise|simple|detailed|formal|casual)\b", re.I),
     "prefers", "style", 0.9, "{obj} answers"),
    (re.compile(r"\bplease\s+be\s+(?:more\s+)?(?P<obj>concise|brief|detailed|formal|casual|direct)\b", re.I),
     "prefers", "style", 0.9, "{obj} answers"),
    (re.compile(r"\b(?:please\s+)?(?:no|avoid|don't use|do not use|stop using|without)\s+(?P<obj>jargon|emojis|"
                r"technical terms|bullet points|long answers|small talk)\b", re.I),
     "avoids", "style", 0.9, "{obj}"),
    # negative stances: "I (strongly) dislike X", "I can't stand X", "I prefer not to X", "I don't eat X"
    (re.compile(_I + r"\s+" + _ADV + r"(?:dislike|hate|detest|despise|loathe|abhor|can't stand|cannot stand|"
                r"can not stand|can't tolerate|cannot tolerate|am not a fan of|'m not a fan of|not a fan of|am not into|"
                r"am not interested in|'m not interested in|not interested in|have no interest in|avoid|steer clear of|"
                r"stay away from|am uninterested in|'m uninterested in|am averse to|'m averse to|(?:am|'m) (?:\w+\s+)?"
                r"(?:not comfortable|uncomfortable) (?:with|in|around)|get (?:\w+\s+)?uncomfortable|"
                r"(?:don't|do not|never) want(?!\s+to\b)|"
                r"have an? (?:\w+\s+)?(?:aversion|dislike|objection|bias)\s+(?:to|for|of|against))\s+", re.I),
     "avoids", None, 0.85, "{obj}"),
    (re.compile(_I + r"\s+" + _ADV + r"(?:refuse to|prefer not to|would rather not|'d rather not|never|won't|will not|"
                r"don't|do not|dont|cannot|can't|prefer not)\s+(?P<verb>[a-z]+)\s+", re.I),
     "avoids", None, 0.85, "{verb} {obj}"),
    (re.compile(r"\bi\s+find\s+(?:it\s+)?(?:\w+\s+)?(?:tedious|difficult|hard|boring|annoying|stressful|"
                r"uncomfortable|exhausting|frustrating)\s+to\s+(?P<verb>[a-z]+)\s+", re.I),
     "avoids", None, 0.8, "{verb} {obj}"),
    (re.compile(r"\bi\s+find\s+(?!it\b)(?P<obj>[\w\s,'-]{3,80}?)\s+(?:too\s+\w+|boring|unsettling|distressing|"
                r"ineffective|tedious|disorienting|annoying|unappealing|overwhelming|uncomfortable|off-putting)\b", re.I),
     "avoids", None, 0.8, "{obj}"),
    # positive stances: "I (strongly) prefer X", "I love X", "I only use X", "I learn best through X"
    (re.compile(_I + r"\s+" + _ADV + r"(?:prefer|like|love|enjoy|adore|favou?r|value|appreciate|prioriti[sz]e|"
                r"believe in|am a (?:big |huge |strong )?(?:fan|advocate) (?:of|for)|'m a (?:big |huge |strong )?"
                r"(?:fan|advocate) (?:of|for)|a (?:big |huge |strong )?(?:fan|advocate) (?:of|for)|am into|'m into|into|"
                r"am passionate about|passionate about|am fascinated by|'m fascinated by|fascinated by|would rather|"
                r"'d rather|learn best (?:through|with|by|from|when|in)|"
                r"have an? (?:\w+\s+)?preference (?:for|towards?))\s+", re.I),
     "prefers", None, 0.8, "{obj}"),
    (re.compile(_I + r"\s+(?:can\s+)?(?:only|exclusively)\s+(?P<verb>[a-z]+)\s+", re.I), "prefers", None, 0.9,
     "{verb} only {obj}"),
    (re.compile(r"\b(?P<obj>[\w\s-]{3,40}?)\s+is\s+my\s+(?:number one|top|main|first|highest)\s+priority", re.I),
     "prefers", None, 0.85, "{obj} (top priority)"),
]
_STRONG = re.compile(r"\b(?:strongly|strictly|absolutely|never|refuse|only|exclusively|can't stand|cannot stand|"
                     r"hate|detest|despise|loathe|severe)\b", re.I)


def _sentences(text: str) -> list[str]:
    text = text.replace("\u2019", "'").replace("\u2018", "'").replace("\u201c", '"').replace("\u201d", '"')
    out = []
    for sentence in re.split(r"(?<=[.!?;])\s+|\n+", text):
        sentence = sentence.strip().strip('"').strip()
        if re.search(r"\bi\b|\bi'm\b", sentence, re.I):  # "I'm allergic to X and avoid Y": "... and I avoid Y"
            sentence = _CONTINUATION.sub(lambda m: f"{m.group(1)} I ", sentence)
        if sentence:
            out.append(sentence)
    return out


def _phrase(template: str, obj: str, verb: str | None) -> str:
    if verb and template.startswith("{verb}"):
        verb_lower = verb.lower()
        if verb_lower in ("avoid", "like", "enjoy", "want"):  # "I avoid using X" -> "using X"
            return template.replace("{verb} ", "").format(obj=obj)
        return template.format(verb=_gerund(verb_lower), obj=obj)
    if verb and "{verb}" in template:
        return template.format(verb=verb.lower(), obj=obj)
    return template.format(obj=obj)


def _match_sentence(sentence: str) -> list[tuple[Stance, str, str, float]]:
    found: list[tuple[Stance, str, str, float]] = []
    taken: list[tuple[int, int]] = []
    for pattern, stance, dimension, confidence, template in _PATTERNS:
        for match in pattern.finditer(sentence):
            if any(a <= match.start() < b for a, b in taken):
                continue  # a more specific pattern already read this clause
            if _SKIP_BEFORE.search(sentence[: match.start()]):
                continue
            verb = match.groupdict().get("verb")
            if verb and verb.lower() in _NEUTRAL_VERBS:
                continue
            captured = match.groupdict().get("obj")
            obj = _object(sentence, match.end()) if (not captured or "{verb}" in template) else captured.strip()
            if len(obj) > 140:  # keep whole words of a long object
                obj = obj[:140].rsplit(" ", 1)[0]
            if len(obj) < 2:
                continue
            subject = _phrase(template, obj, verb)
            reason = _reason(sentence, match.end())
            if reason and "(" not in subject:
                subject = f"{subject} ({reason})"
            if dimension is None and stance == "avoids" and verb and verb.lower() in ("eat", "drink", "consume"):
                dim = "diet"
            else:
                dim = dimension or _dimension(subject)
            window = sentence[max(0, match.start() - 20): match.end()]
            strength = max(confidence, 0.9) if _STRONG.search(window) else confidence
            found.append((stance, subject, dim, strength))
            taken.append((match.start(), match.end() + len(obj)))
    return found


def extract_explicit(text: str, evidence_id: str, when: str | None = None) -> list[PreferenceStatement]:
    """First-person preference statements in ``text``, each citing ``evidence_id`` (origin "explicit").

    Deterministic and fast (regular expressions), so it runs on every chat turn before any slower
    inference; the result says nothing about whom to store it for: the caller's own user.
    """
    created = when or now_iso()
    out: dict[str, PreferenceStatement] = {}
    for sentence in _sentences(text or ""):
        for stance, subject, dimension, confidence in _match_sentence(sentence):
            statement = PreferenceStatement.make(stance, subject, dimension=dimension, evidence=[evidence_id],
                                                 confidence=confidence, origin="explicit", created=created)
            out.setdefault(statement.id, statement)
    return list(out.values())


def explicit_from_signals(signals: Iterable[object]) -> list[PreferenceStatement]:
    """Explicit statements in the user-written texts of signals (statements, posts, turns, corrections)."""
    out: dict[str, PreferenceStatement] = {}
    for signal in signals:
        for text in signal.texts():  # type: ignore[attr-defined]
            for statement in extract_explicit(text, signal.id, when=getattr(signal, "time", None)):  # type: ignore[attr-defined]
                out.setdefault(statement.id, statement)
    return list(out.values())
