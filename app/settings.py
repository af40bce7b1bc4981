"""One typed settings object for the whole product: defaults < TOML file < CDRA_* env vars < CLI flags.

Nested fields use a double underscore in the environment, e.g. CDRA_JUDGE__BACKEND=openai,
CDRA_JUDGE__BASE_URL=http://127.0.0.1:8000/v1, CDRA_CHAT__PORT=7861.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from alignment.engines.spec import ModelSpec
from memory.config import MemoryConfig

ROLES = ("policy", "preference", "prm", "judge", "teacher")
Role = Literal["policy", "preference", "prm", "judge", "teacher"]


#: the vector memory's own config (memory/config.py); the old name stays importable
MemorySettings = MemoryConfig


class ChatSettings(BaseModel):
    """The Gradio app and the generation settings of a chat turn."""

    host: str = "127.0.0.1"
    port: int = 7860
    root_path: str = ""
    auth: bool = Field(True, description="require sign-in against the user store")
    max_message_chars: int = 8000
    max_new_tokens: int = Field(384, description="cap on a turn's new tokens; the reasoning budget shrinks to fit")
    #: budgeted defensive reasoning (alignment/budget_forcing.py): at most this many reasoning steps of at most
    #: ``step_tokens`` each, then the answer with its own ``answer_tokens``; a budget that runs out forces the answer
    reasoning_steps: int = Field(3, ge=1, le=5)
    step_tokens: int = Field(32, ge=8, le=512)
    answer_tokens: int = Field(128, ge=16, le=4096)
    temperature: float = 0.7
    top_p: float = 0.95
    show_reasoning: bool = True


class InferenceSettings(BaseModel):
    """Preference inference (the `preference` role: background inference in the app, `cdra prefs infer`).

    The first output is decoded greedily. With ``votes`` > 0, that many further outputs are sampled (T = 0.9, one
    engine call) and a statement fewer than ``min_support`` of them state is not stored; two statements say the
    same when their stances are equal and the memory's embeddings of them reach ``agreement`` (calibrated for the
    packaged all-MiniLM-L6-v2: recalibrate it with `cdra train prefs data` if you configure another model).
    """

    votes: int = Field(4, ge=0, le=16, description="sampled outputs that vote on each inferred statement; 0: none")
    min_support: int = Field(1, ge=1, description="votes that must state a statement before it is stored")
    agreement: float = Field(0.658, gt=0.0, le=1.0, description="cosine at which two statements say the same")

    @model_validator(mode="after")
    def _support_within_votes(self) -> InferenceSettings:
        if self.votes and self.min_support > self.votes:
            raise ValueError(f"inference.min_support ({self.min_support}) cannot exceed inference.votes "
                             f"({self.votes}): nothing could ever be stored")
        return self


class ServeSettings(BaseModel):
    """`cdra serve`: the OpenAI-compatible HTTP API."""

    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = Field(None, description="if set, clients must send it as a Bearer token")


def default_data_dir() -> Path:
    return Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share")) / "cdra"


class Settings(BaseSettings):
    """Everything configurable. Construct with ``load_settings()`` so the TOML file is found."""

    model_config = SettingsConfigDict(env_prefix="CDRA_", env_nested_delimiter="__", extra="forbid")

    data_dir: Path = Field(default_factory=default_data_dir)
    model_cache_dir: Path | None = Field(None, description="converted model cache; default data_dir/models")
    seed: int = 0

    policy: ModelSpec = ModelSpec()
    preference: ModelSpec = ModelSpec()
    prm: ModelSpec = ModelSpec()
    judge: ModelSpec = ModelSpec()
    teacher: ModelSpec = ModelSpec()

    memory: MemoryConfig = MemoryConfig()
    inference: InferenceSettings = InferenceSettings()
    chat: ChatSettings = ChatSettings()
    serve: ServeSettings = ServeSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_file = os.environ.get("CDRA_CONFIG_FILE")
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if toml_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_file))
        return tuple(sources)

    # Derived locations: one data directory holds everything a user owns.
    @property
    def models_dir(self) -> Path:
        return self.model_cache_dir or self.data_dir / "models"

    @property
    def chroma_dir(self) -> Path:
        return self.data_dir / "chroma"

    @property
    def logs_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def registry_dir(self) -> Path:
        return self.data_dir / "registry"

    @property
    def runs_dir(self) -> Path:
        return self.data_dir / "runs"

    def role(self, role: Role) -> ModelSpec:
        return getattr(self, role)


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Settings from (lowest to highest) defaults, the TOML file, CDRA_* env vars, explicit overrides.

    The TOML file is ``config_file``, else $CDRA_CONFIG_FILE, else ``<data_dir>/config.toml`` if it exists.
    """
    if config_file is None and "CDRA_CONFIG_FILE" not in os.environ:
        data_dir = Path(overrides.get("data_dir") or os.environ.get("CDRA_DATA_DIR") or default_data_dir())
        candidate = data_dir / "config.toml"
        config_file = candidate if candidate.exists() else None
    previous = os.environ.get("CDRA_CONFIG_FILE")
    try:
        if config_file is not None:
            path = Path(config_file)
            if not path.is_file():
                raise FileNotFoundError(f"config file {path} does not exist")
            os.environ["CDRA_CONFIG_FILE"] = str(path)
        clean = {k: v for k, v in overrides.items() if v is not None}
        return Settings(**clean)
    finally:
        if previous is None:
            os.environ.pop("CDRA_CONFIG_FILE", None)
        else:
            os.environ["CDRA_CONFIG_FILE"] = previous
