"""The user store behind sign-in and the API: names with salted scrypt hashes of their password and of
their API keys, in ``<data_dir>/users.json``.

The file is re-read on every check, so ``cdra users add`` or ``cdra users key revoke`` takes effect in a
running app; writes are atomic (temporary file + ``os.replace``) and the file is private (mode 0600).
"""

from __future__ import annotations

import getpass
import hashlib
import hmac
import json
import os
import re
import secrets
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from alignment.errors import CdraError

#: the identity used when sign-in is switched off (chat.auth = false, loopback only)
LOCAL_USER = "local"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # whole string (fullmatch)
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}
MIN_PASSWORD = 8
#: API keys read ``cdra_<12 hex: key id>_<43 random url-safe characters>``
KEY_PREFIX = "cdra_"


class UserError(CdraError):
    """A bad user name or password, or an unknown or duplicate user."""


def check_name(name: str) -> str:
    """Names are ids in memory and logs: letters, digits, ``_ . -``; ``__`` is reserved for the app's own scopes."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or "__" in name:
        raise UserError(
            f"invalid user name {name!r}: use 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit "
            "(no '__')"
        )
    return name


def hash_password(password: str, salt: bytes | None = None) -> str:
    """``scrypt$n$r$p$salt$hash`` (hex): a fresh random salt per password, so equal passwords differ."""
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, dklen=32, maxmem=64 * 1024 * 1024, **_SCRYPT)
    return f"scrypt${_SCRYPT['n']}${_SCRYPT['r']}${_SCRYPT['p']}${salt.hex()}${digest.hex()}"


def verify_password(password: str, encoded: str) -> bool:
    try:
        scheme, n, r, p, salt, expected = encoded.split("$")
        if scheme != "scrypt":
            return False
        digest = hashlib.scrypt(
            password.encode("utf-8"),
            salt=bytes.fromhex(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=32,
            maxmem=64 * 1024 * 1024,
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(digest.hex(), expected)


@dataclass(frozen=True)
class UserInfo:
    name: str
    created: str


@dataclass(frozen=True)
class ApiKeyInfo:
    """One API key as listed: its id (the key's public part), owner, creation time, admin or not."""

    key_id: str
    user: str
    created: str
    admin: bool = False


@dataclass(frozen=True)
class ApiCaller:
    """Who an authenticated API request is from: the key's user (an admin key may act for others)."""

    user: str
    key_id: str
    admin: bool = False


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class UserStore:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._verified: dict[tuple[str, str], str] = {}

    @classmethod
    def for_data_dir(cls, data_dir: Path) -> UserStore:
        return cls(Path(data_dir) / "users.json")

    def _read(self) -> dict[str, dict[str, str]]:
        if not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as exc:  # unreadable, not UTF-8, not JSON
            raise UserError(f"the user store {self.path} is unreadable ({exc}): fix or remove it") from exc
        users = data.get("users", {}) if isinstance(data, dict) else None
        if not isinstance(users, dict) or not all(isinstance(u, dict) for u in users.values()):
            raise UserError(f"the user store {self.path} is not a users file: fix or remove it")
        return users

    def _write(self, users: dict[str, dict[str, str]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".users.", dir=self.path.parent)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump({"users": users}, fh, indent=2, sort_keys=True)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def add(self, name: str, password: str, replace: bool = False) -> UserInfo:
        """Create a user (or, with ``replace``, set a new password for an existing one)."""
        check_name(name)
        if len(password) < MIN_PASSWORD:
            raise UserError(f"the password is too short: use at least {MIN_PASSWORD} characters")
        users = self._read()
        if name in users and not replace:
            raise UserError(f"user {name!r} already exists: pass --replace to set a new password")
        created = users.get(name, {}).get("created") or _now()
        users[name] = {**users.get(name, {}), "hash": hash_password(password), "created": created}  # keys stay
        self._write(users)
        return UserInfo(name, created)

    def remove(self, name: str) -> None:
        users = self._read()
        if name not in users:
            raise UserError(f"no user {name!r}: `cdra users list` shows who exists")
        del users[name]
        self._write(users)

    def list(self) -> list[UserInfo]:
        return [UserInfo(n, u.get("created", "")) for n, u in sorted(self._read().items())]

    def exists(self, name: str) -> bool:
        return name in self._read()

    def is_empty(self) -> bool:
        return not self._read()

    def verify(self, name: str, password: str) -> bool:
        """The Gradio auth callback: True only for a known name with the right password."""
        user = self._read().get(name)
        if user is None:
            # spend the same time as a real check, so a wrong name is not faster than a wrong password
            verify_password(password, hash_password("x" * MIN_PASSWORD))
            return False
        return verify_password(password, str(user.get("hash", "")))

    # -- API keys (`cdra serve`) ------------------------------------------------------------------------
    def create_key(self, name: str, admin: bool = False) -> tuple[str, ApiKeyInfo]:
        """A new API key for an existing user; the key itself is returned once and stored only as a hash.

        A key acts as its user only; ``admin`` lets it also name any other user in a request (operators).
        """
        users = self._read()
        if name not in users:
            raise UserError(f"no user {name!r}: create the user first with `cdra users add {name}`")
        key_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
        info = ApiKeyInfo(key_id, name, _now(), admin)
        keys = dict(users[name].get("keys") or {})
        keys[key_id] = {"hash": hash_password(secret), "created": info.created, "admin": admin}
        users[name] = {**users[name], "keys": keys}
        self._write(users)
        return f"{KEY_PREFIX}{key_id}_{secret}", info

    def revoke_keys(self, name: str, key_id: str | None = None) -> int:
        """Revoke one of a user's keys (by id) or all of them; returns how many were revoked."""
        users = self._read()
        if name not in users:
            raise UserError(f"no user {name!r}: `cdra users list` shows who exists")
        keys = dict(users[name].get("keys") or {})
        if key_id is not None and key_id not in keys:
            raise UserError(f"user {name!r} has no key {key_id!r}: `cdra users key list {name}` shows them")
        gone = [key_id] if key_id is not None else list(keys)
        for k in gone:
            del keys[k]
        users[name] = {**users[name], "keys": keys}
        self._write(users)
        return len(gone)

    def keys(self, name: str | None = None) -> list[ApiKeyInfo]:
        """Key ids (never the keys) of one user or of everyone."""
        return [ApiKeyInfo(k, user, meta.get("created", ""), bool(meta.get("admin")))
                for user, entry in sorted(self._read().items()) if name in (None, user)
                for k, meta in sorted((entry.get("keys") or {}).items())]

    def has_keys(self) -> bool:
        return any(entry.get("keys") for entry in self._read().values())

    def authenticate_key(self, token: str) -> ApiCaller | None:
        """The user a presented API key belongs to, or None (unknown, revoked or wrong key).

        The store is re-read every time, so a revoked key (or a removed user) is refused at once; a
        verified (key, stored hash) pair is remembered in this process to spare scrypt on every request.
        """
        if not token.startswith(KEY_PREFIX) or len(token) < len(KEY_PREFIX) + 14 or token[len(KEY_PREFIX) + 12] != "_":
            return None
        key_id, secret = token[len(KEY_PREFIX) : len(KEY_PREFIX) + 12], token[len(KEY_PREFIX) + 13 :]
        for user, entry in self._read().items():
            meta = (entry.get("keys") or {}).get(key_id)
            if meta is None:
                continue
            stored = str(meta.get("hash", ""))
            fingerprint = hashlib.sha256(token.encode("utf-8")).hexdigest()
            cached = self._verified.get((key_id, stored))
            if cached is None or not hmac.compare_digest(cached, fingerprint):
                if not verify_password(secret, stored):
                    return None
                if len(self._verified) > 1024:
                    self._verified.clear()
                self._verified[(key_id, stored)] = fingerprint
            return ApiCaller(user, key_id, bool(meta.get("admin")))
        return None


def default_account_name() -> str:
    """The first-run account is named after the OS user when that is a valid name, else ``me``."""
    try:
        name = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry for this uid (containers)
        name = ""
    try:
        return check_name(name) if name and name != "root" else "me"
    except UserError:
        return "me"


def ensure_first_account(store: UserStore) -> tuple[str, str] | None:
    """First run with sign-in on and nobody registered: create one account with a random password.

    Returns (name, password) so the caller can print them once; None when users already exist.
    """
    if not store.is_empty():
        return None
    name = default_account_name()
    password = secrets.token_urlsafe(12)
    store.add(name, password)
    return name, password
