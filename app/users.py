"""The user store behind sign-in: names with salted scrypt password hashes in ``<data_dir>/users.json``.

The file is re-read on every check, so ``cdra users add`` takes effect in a running app; writes are
atomic (temporary file + ``os.replace``) and the file is private to its owner (mode 0600).
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
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}
MIN_PASSWORD = 8


class UserError(CdraError):
    """A bad user name or password, or an unknown or duplicate user."""


def check_name(name: str) -> str:
    """Names are ids in memory and logs: letters, digits, ``_ . -``; ``__`` is reserved for the app's own scopes."""
    if not _NAME.match(name or "") or "__" in name:
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


class UserStore:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @classmethod
    def for_data_dir(cls, data_dir: Path) -> UserStore:
        return cls(Path(data_dir) / "users.json")

    def _read(self) -> dict[str, dict[str, str]]:
        if not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise UserError(f"the user store {self.path} is unreadable ({exc}): fix or remove it") from exc
        if not isinstance(data, dict) or not isinstance(data.get("users", {}), dict):
            raise UserError(f"the user store {self.path} is not a users file: fix or remove it")
        return data.get("users", {})

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
        created = users.get(name, {}).get("created") or datetime.now(UTC).isoformat(timespec="seconds")
        users[name] = {"hash": hash_password(password), "created": created}
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
        return verify_password(password, user["hash"])


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
