"""Adapters shipped with the package for the packaged default model (package data): a fresh install's role
serves its adapter when nothing is promoted in the registry. ``preference/`` holds the AlignXplore LoRA that
`cdra train prefs sft|grpo` trained on the PrefEval dev topics (its DATA_CARD.md says how to reproduce it).
"""

from __future__ import annotations

from pathlib import Path

ADAPTERS_DIR = Path(__file__).resolve().parent


def packaged_adapter(role: str) -> Path | None:
    """The shipped adapter directory for ``role`` (only ``preference`` ships one), or None if absent."""
    path = ADAPTERS_DIR / role
    return path if (path / "adapter_config.json").is_file() and any(path.glob("adapter_model.*")) else None
