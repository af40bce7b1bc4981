"""Explicit preferences from what a user writes ("I'm allergic to cats", "don't share my location"):
deterministic first-person patterns, no model call, so a chat turn's statements are stored at once.

Only first-person declaratives count: "store that bob prefers X" names no preference of the speaker and
yields nothing; questions and hypotheticals ("would I like…", "if I hate…") are skipped, and so are
reactions to the conversation itself ("I love that idea"). Every clause is read: "I'm vegetarian and I
hate long answers" is two statements. The caller writes the result into the speaking user's own memory;
each statement cites the turn id and quotes the sentence it was read from.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from alignment.preferences import Evidence, PreferenceStatement, Stance, now_iso

_ADV = r"(?:(?:really|strongly|strictly|greatly|absolutely|totally|completely|much|generally|usually|always|" \
       r"truly|highly|definitely|also|just|personally|actually|honestly|very|so|still|do|genuinely|firmly|" \
       r"steadfastly|adamantly|deeply|typically|mostly|tend to|try to|need to|have to|prefer to|want to|would|" \
       r"particularly|especially|often|normally|kind of|sort of|\w+ly)\s+)*"
_I = r"\b(?:i|i'm|i am|im|i've|i have)\b"
# where a clause's object ends: punctuation or a conjunction that starts another thought
_END = re.compile(
    r"\s*(?:[.;!?]|,\s*(?:but|so|and i|which|while|though|i|should|can|could|would|will|what|how|which|where|"
    r"when|why|any|do you|is there|are there)\b|\s(?:but|so that|and i|because|due to|since|as i|"
    r"as i'm|as they|as it|when|while|whereas|though|although|even if|regardless|and would|and will)\b|,\s*(?:as|even|especially)\b|"
    r"\s[-–—]\s|$)", re.I)
_REASON = re.compile(r"\b(?:due to|because(?: of)?|since|as i'm|as i am)\s+(?P<reason>[^.;!?,]{3,80})", re.I)
# "I'm allergic to wool and avoid using it": the second verb gets its own "I"
_CONTINUATION = re.compile(r"\b(and|but|so)\s+(?=(?:(?:\w+ly|also|always|never|only|much|try to|tend to|will|can)\s+)*"
                           r"(?:avoid|prefer|dislike|only|never|refuse|can't|cannot|will not|won't|love|enjoy|hate|"
                           r"exclusively|don't|do not|steer clear|stay away)\b)", re.I)
#: "products that are vegan and do not contain X": the "and" continues a relative clause, not the speaker
_RELATIVE = re.compile(r"\b(?:that|which|who|whose|where)\b(?!.*\b(?:and|but|so)\b)[^,;]*$", re.I)
_SKIP_BEFORE = re.compile(r"\b(?:if|whether|do|does|would|should|could|can|might|will|did|unless|used to)\s*$", re.I)

_GERUND_EXCEPTIONS = {"swim": "swimming", "run": "running", "shop": "shopping", "sit": "sitting", "get": "getting",
                      "put": "putting", "plan": "planning", "stop": "stopping", "be": "being", "see": "seeing"}
_NEUTRAL_VERBS = {"know", "think", "understand", "mind", "need", "have", "see", "get", "remember", "care", "believe",
                  "mean", "want", "feel", "say", "expect", "agree", "recall", "usually", "really"}

_HEALTH = re.compile(r"\b(?:allerg|intoleran|gluten|dairy|lactose|nuts?\b|peanut|shellfish|medical|diabet|celiac|"
                     r"phobia|asthma|migraine|pregnan|injur|sugar|caffeine|alcohol|knee|sensitive skin)", re.I)
_DIET = re.compile(r"\b(?:vegan|vegetarian|pescatarian|kosher|halal|meat|pork|beef|seafood|fish|spicy|food|cuisine|"
                   r"eat|eating|diets?|dish|dishes|restaurants?|dining)\b", re.I)
_STYLE = re.compile(r"\b(?:concise|jargon|bullet points?|emojis?|technical terms|step[- ]by[- ]step|tone|small talk|"
                    r"explanations?|answers|replies|responses|fluff|filler|disclaimers|caveats|verbose|wordy|"
                    r"long-winded|walls? of text|markdown)\b", re.I)
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
    phrase = re.sub(r"^(?:the idea of\s+)?", "", phrase.strip(), flags=re.I)
    return phrase.strip(" ,:\"'").rstrip(".")


def _reason(text: str, start: int) -> str | None:
    match = _REASON.search(text, start)
    return match.group("reason").strip().rstrip(".,") if match else None


_DOCTOR = (r"\b(?:my|the)\s+(?:doctor|dentist|physician|pharmacist|nutritionist|dietitian|allergist|gp)\s+"
           r"(?:has\s+)?(?:told|advised|warned|asked|ordered|instructed)\s+me\s+")
# Each pattern: (regex over one sentence, stance, dimension or None = by keyword, base confidence, how to phrase)
_Pattern = tuple[re.Pattern[str], Stance, str | None, float, str]
_PATTERNS: list[_Pattern] = [
    (re.compile(_I + r"\s+" + _ADV + r"(?:(?:severely|very|highly|deathly|extremely|mildly)\s+)?allergic to\s+", re.I),
     "avoids", "health", 0.95, "{obj} (allergy)"),
    (re.compile(_I + r"\s+(?:a|an)\s+(?:(?:severe|strong|mild|serious|bad|terrible|life-threatening|deadly|known)\s+)?"
                r"(?P<obj>[\w-]+(?:\s(?!allerg)[\w-]+){0,3}?)\s+allerg(?:y|ies)\b(?!\s+to\b)", re.I),
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
    # what a doctor told the user: "My doctor told me to never take aspirin"
    (re.compile(_DOCTOR + r"(?:to\s+never|never\s+to|not\s+to|to\s+stop)\s+(?P<verb>[a-z]+)\s+", re.I),
     "avoids", "health", 0.9, "{verb} {obj}"),
    (re.compile(_DOCTOR + r"(?:to\s+avoid|against)\s+", re.I), "avoids", "health", 0.9, "{obj}"),
    # privacy requests: "don't share my location", "never store my address", "keep my name private"
    (re.compile(r"\b(?:please\s+)?(?:do not|don't|dont|never|stop)\s+(?P<verb>share|store|save|remember|record|"
                r"mention|reveal|disclose|track|log|use|sell|publish)\s+(?=my\b|our\b)", re.I),
     "avoids", "privacy", 0.95, "{verb} {obj}"),
    (re.compile(r"\bkeep\s+(?P<obj>my\s+[\w\s]{2,40}?)\s+(?:private|secret|confidential)\b", re.I),
     "avoids", "privacy", 0.95, "sharing {obj}"),
    # answer style requests
    (re.compile(r"\b(?:please\s+)?(?:always\s+)?(?:keep|make)\s+(?:your\s+|the\s+)?(?:answers|replies|responses|"
                r"explanations|it|them|things)\s+(?:\w+\s+)?(?P<obj>short|brief|concise|simple|detailed|formal|casual)\b",
                re.I),
     "prefers", "style", 0.9, "{obj} answers"),
    (re.compile(r"(?:^\s*|\bplease\s+)be\s+(?:more\s+)?(?P<obj>concise|brief|detailed|formal|casual|direct)\b", re.I),
     "prefers", "style", 0.9, "{obj} answers"),
    (re.compile(r"(?:^\s*|\bplease\s+|\balways\s+)(?:answer|reply|respond|write|explain things)(?:\s+to me)?\s+"
                r"(?P<obj>(?:in|with|using)\s+[\w-]+(?:\s+[\w-]+){0,3}?)(?=\s*(?:[.;!?,]|$)|\s+(?:and|but|please)\b)", re.I),
     "prefers", "style", 0.9, "answers {obj}"),
    (re.compile(r"\b(?:please\s+)?give me\s+(?P<obj>short|brief|concise|detailed|simple|direct|straight)\s+"
                r"(?:answers|replies|responses|explanations)\b", re.I),
     "prefers", "style", 0.9, "{obj} answers"),
    (re.compile(r"\b(?:please\s+)?(?:no|avoid|don't use|do not use|stop using|without|skip|cut|spare me)\s+(?:the\s+)?"
                r"(?P<obj>jargon|emojis?|technical terms|bullet points|long answers|lengthy answers|long explanations|"
                r"lengthy explanations|walls? of text|small talk|fluff|filler|disclaimers|caveats|markdown)\b", re.I),
     "avoids", "style", 0.9, "{obj}"),
    # negative stances: "I (strongly) dislike X", "I can't stand X", "I prefer not to X", "I don't eat X"
    (re.compile(_I + r"\s+" + _ADV + r"(?:dislike|hate|detest|despise|loathe|abhor|can't stand|cannot stand|"
                r"can not stand|can't tolerate|cannot tolerate|am not a fan of|'m not a fan of|not a fan of|am not into|"
                r"(?:am\s+)?not\s+(?:really\s+|very\s+|particularly\s+|too\s+|that\s+|a\s+big\s+fan\s+of\s+)?"
                r"(?:into|keen on|fond of|big on|a fan of)|"
                r"am not interested in|'m not interested in|not interested in|have no interest in|avoid|steer clear of|"
                r"stay away from|am uninterested in|'m uninterested in|am averse to|'m averse to|(?:am|'m) (?:\w+\s+)?"
                r"(?:not comfortable|uncomfortable) (?:with|in|around)|get (?:\w+\s+)?uncomfortable|"
                r"(?:don't|do not|never) want(?!\s+to\b)|"
                r"have an? (?:\w+\s+)?(?:aversion|dislike|objection|bias)\s+(?:to|for|of|against))\s+", re.I),
     "avoids", None, 0.85, "{obj}"),
    (re.compile(_I + r"\s+" + _ADV + r"(?:don't|do not|dont|never|no longer) (?:want|wish|like|care) to\s+"
                r"(?P<verb>[a-z]+)(?:\s+|$)", re.I),
     "avoids", None, 0.85, "{verb} {obj}"),
    (re.compile(_I + r"\s+" + _ADV + r"(?:refuse to|prefer not to|would rather not|'d rather not|never|won't|will not|"
                r"don't|do not|dont|cannot|can't|prefer not|no longer|(?:am\s+)?not (?:allowed|supposed|able) to|"
                r"(?:am\s+)?unable to)\s+(?P<verb>[a-z]+)\s+", re.I),
     "avoids", None, 0.85, "{verb} {obj}"),
    (re.compile(r"\bi\s+" + _ADV + r"find\s+(?:it\s+)?(?:\w+\s+)?(?:tedious|difficult|hard|boring|annoying|stressful|"
                r"uncomfortable|exhausting|frustrating)\s+to\s+(?P<verb>[a-z]+)\s+", re.I),
     "avoids", None, 0.8, "{verb} {obj}"),
    (re.compile(r"\bi\s+" + _ADV + r"find\s+(?!it\b)(?P<obj>[\w\s,'-]{3,80}?)\s+(?:too\s+\w+|boring|unsettling|distressing|"
                r"ineffective|tedious|disorienting|annoying|unappealing|overwhelming|uncomfortable|off-putting)\b", re.I),
     "avoids", None, 0.8, "{obj}"),
    # positive stances: "I (strongly) prefer X", "I love X", "I only use X", "I learn best through X"
    (re.compile(_I + r"\s+" + _ADV + r"(?:prefer|like|love|enjoy|adore|favou?r|value|appreciate|prioriti[sz]e|"
                r"believe in|am a (?:big |huge |strong )?(?:fan|advocate) (?:of|for)|'m a (?:big |huge |strong )?"
                r"(?:fan|advocate) (?:of|for)|a (?:big |huge |strong )?(?:fan|advocate) (?:of|for)|am into|'m into|into|"
                r"am passionate about|passionate about|am fascinated by|'m fascinated by|fascinated by|would rather|"
                r"'d rather|learn best (?:through|with|by|from|when|in)|lean (?:towards?|toward)|gravitate (?:towards?)|"
                r"stick (?:to|with)|go for|opt for|am partial to|'m partial to|"
                r"have an? (?:\w+\s+)?preference (?:for|towards?))\s+", re.I),
     "prefers", None, 0.8, "{obj}"),
    (re.compile(_I + r"\s+" + _ADV + r"(?:can\s+)?(?:only|exclusively)\s+(?P<verb>[a-z]+)\s+", re.I), "prefers", None, 0.9,
     "{verb} only {obj}"),
    (re.compile(r"\b(?P<obj>[\w\s-]{3,40}?)\s+is\s+my\s+(?:number one|top|main|first|highest)\s+priority", re.I),
     "prefers", None, 0.85, "{obj} (top priority)"),
]
_STRONG = re.compile(r"\b(?:strongly|strictly|absolutely|never|refuse|only|exclusively|can't stand|cannot stand|"
                     r"hate|detest|despise|loathe|severe)\b", re.I)


_REWRITES: list[tuple[re.Pattern[str], object]] = [
    (re.compile(r"\bI(?:'ve| have) got\b", re.I), "I have"),
    (re.compile(r"\bI'd\b", re.I), "I would"),
    (re.compile(r"\bI've\b", re.I), "I have"),
    # "As someone who only uses vegan products, …" says "I only use vegan products"
    (re.compile(r"\bas (?:someone|somebody|a person|one) who\s+((?:\w+ly\s+|only\s+|always\s+|never\s+)*)(\w+)\b", re.I),
     lambda m: f"I {m.group(1)}{_first_person_verb(m.group(2))}"),
    (re.compile(r"\bas an? (vegan|vegetarian|pescatarian|celiac|coeliac|diabetic)\b", re.I), r"I'm \1, and"),
]
_VERB_FORMS = {"is": "am", "has": "have", "does": "do", "was": "was"}


def _first_person_verb(verb: str) -> str:
    lower = verb.lower()
    if lower in _VERB_FORMS:
        return _VERB_FORMS[lower]
    if lower.endswith(("ches", "shes", "sses", "xes")):
        return verb[:-2]
    if lower.endswith("ies") and len(lower) > 4:
        return verb[:-3] + "y"
    return verb[:-1] if lower.endswith("s") and not lower.endswith("ss") else verb


def _sentences(text: str) -> list[tuple[str, str]]:
    """(the sentence as written, the sentence in the first-person form the patterns read)."""
    text = text.replace("\u2019", "'").replace("\u2018", "'").replace("\u201c", '"').replace("\u201d", '"')
    out = []
    for original in re.split(r"(?<=[.!?;])\s+|\n+", text):
        original = original.strip().strip('"').strip()
        sentence = original
        for pattern, repl in _REWRITES:
            sentence = pattern.sub(repl, sentence)  # type: ignore[arg-type]
        if re.search(r"\bi\b|\bi'm\b", sentence, re.I):  # "I'm allergic to X and avoid Y": "... and I avoid Y"
            sentence = _CONTINUATION.sub(
                lambda m: m.group(0) if _RELATIVE.search(m.string[: m.start()]) else f"{m.group(1)} I ", sentence)
        if sentence:
            out.append((original, sentence))
    return out


#: what a reaction to the conversation looks like: "I love that idea", "I appreciate your help"
_REACTION = re.compile(r"^(?:(?:that|this|it|these|those|them|all that|all this)$|your\b|all (?:of )?(?:your|these|those)\b|"
                       r"the (?:idea|suggestion|sound of|thought of)\b|hearing\b|(?:the|this|that|these|those)\s"
                       r"[\w\s-]{0,40}?\b(?:idea|ideas|suggestions?|concept|tips?|recommendations?|advice|help|options?)$)",
                       re.I)
_TRAILING_FILLER = re.compile(r"(?:\s+(?:actually|too|as well|though|anyway|honestly|really|lol|haha))+$", re.I)
_DETERMINERS = {"the", "a", "an", "my", "your", "any", "all", "this", "that", "these", "those", "some", "his", "her",
                "their", "our", "its", "me", "them", "us", "him"}
_MEDICAL_TAKE = re.compile(r"(?:can't|cannot|can not|not allowed to|not supposed to|unable to)\s+take\s*$", re.I)
_WISH = re.compile(r"\bwould\s+(?:really\s+|also\s+)?(?:like|love|enjoy|want)\b", re.I)


def _clean_object(obj: str, bare_infinitive: bool = False) -> str:
    """The object phrase as a subject: "to spend my breaks reading" -> "spending my breaks reading"
    (``bare_infinitive``: "I'd rather take the train" -> "taking the train")."""
    obj = _TRAILING_FILLER.sub("", obj.strip()).strip(" ,")
    infinitive = re.match(r"(?:to\s+)([a-z]+)\b(.*)$" if not bare_infinitive else r"(?:to\s+)?([a-z]+)\b(.*)$", obj, re.I)
    if infinitive and infinitive.group(1).lower() not in _DETERMINERS:
        obj = _gerund(infinitive.group(1)) + infinitive.group(2)
    return obj


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
            from_rest = not captured or "{verb}" in template
            obj = _object(sentence, match.end()) if from_rest else captured.strip()
            if template.startswith("answers ") and sentence.rstrip().endswith("?"):
                continue  # "answer in detail: how does X work?" asks for one answer, it states no preference
            if "{verb}" not in template:
                obj = _clean_object(obj, bare_infinitive=match.group(0).lower().rstrip().endswith("rather"))
            else:
                obj = _TRAILING_FILLER.sub("", obj).strip(" ,")
            if len(obj) > 140:  # keep whole words of a long object
                obj = obj[:140].rsplit(" ", 1)[0]
            if len(obj) < 2 or _REACTION.match(obj):
                continue
            dim = dimension
            if dim is None and stance == "avoids" and verb and verb.lower() in ("eat", "drink", "consume"):
                dim = "diet"
            elif dim is None and _MEDICAL_TAKE.search(match.group(0)):
                dim = "health"  # "I can't take ibuprofen": a medical constraint, offered with every answer
            subject = _phrase(template, obj, verb)
            dim = dim or _dimension(subject)
            if _WISH.search(match.group(0)) and dim != "style":
                continue  # "I would love to visit Rome" is a wish for now, not a standing preference
            reason = _reason(sentence, match.end())
            if reason and "(" not in subject:
                subject = f"{subject} ({reason})"
            window = sentence[max(0, match.start() - 20): match.end()]
            strength = max(confidence, 0.9) if _STRONG.search(window) else confidence
            found.append((stance, subject, dim, strength))
            taken.append((match.start(), match.end() + (len(obj) if from_rest else 0)))
    return found


def extract_explicit(text: str, evidence_id: str, when: str | None = None) -> list[PreferenceStatement]:
    """First-person preference statements in ``text``, each citing ``evidence_id`` (origin "explicit").

    Deterministic and fast (regular expressions), so it runs on every chat turn before any slower
    inference; the result says nothing about whom to store it for: the caller's own user.
    """
    created = when or now_iso()
    out: dict[str, PreferenceStatement] = {}
    for original, sentence in _sentences(text or ""):
        for stance, subject, dimension, confidence in _match_sentence(sentence):
            source = Evidence(id=evidence_id, quote=original, time=created, origin="explicit")
            statement = PreferenceStatement.make(stance, subject, dimension=dimension, evidence=[evidence_id],
                                                 confidence=confidence, origin="explicit", created=created,
                                                 sources=[source])
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
