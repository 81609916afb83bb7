"""Strict parsers for settings read from the environment.

Every helper raises ``ImproperlyConfigured`` with the variable's name and what was wrong, so
a mistyped value stops the process at start instead of surfacing later as odd behaviour.
``*_FILE`` variants let secrets come from files (Docker/Kubernetes secrets).
"""

from __future__ import annotations

import ipaddress
import os
import secrets
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _raw(name: str, environ=None) -> str | None:
    environ = os.environ if environ is None else environ
    value = environ.get(name)
    return None if value is None else value.strip()


def env_str(name: str, default: str | None = None, environ=None) -> str | None:
    value = _raw(name, environ)
    return default if value is None or value == "" else value


def env_bool(name: str, default: bool, environ=None) -> bool:
    value = _raw(name, environ)
    if value is None:
        return default
    lowered = value.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ImproperlyConfigured(
        f"{name}={value!r} is not a boolean; use one of 1/0, true/false, yes/no, on/off."
    )


def env_int(
    name: str, default: int, *, minimum: int | None = None, maximum: int | None = None,
    environ=None,
) -> int:
    value = _raw(name, environ)
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={value!r} is not an integer.") from None
    if minimum is not None and number < minimum:
        raise ImproperlyConfigured(f"{name}={number} is below the minimum {minimum}.")
    if maximum is not None and number > maximum:
        raise ImproperlyConfigured(f"{name}={number} is above the maximum {maximum}.")
    return number


def env_choice(name: str, default: str, choices: tuple[str, ...], environ=None) -> str:
    value = _raw(name, environ)
    if value is None or value == "":
        return default
    if value not in choices:
        raise ImproperlyConfigured(f"{name}={value!r} is not one of {', '.join(choices)}.")
    return value


def env_list(name: str, default: list[str], environ=None) -> list[str]:
    value = _raw(name, environ)
    if value is None or value == "":
        return list(default)
    return [item.strip() for item in value.split(",") if item.strip()]


def env_secret(name: str, environ=None) -> str | None:
    """Value of ``NAME`` or the content of the file named by ``NAME_FILE`` (not both)."""
    direct = _raw(name, environ)
    file_name = _raw(f"{name}_FILE", environ)
    if direct and file_name:
        raise ImproperlyConfigured(f"Set either {name} or {name}_FILE, not both.")
    if file_name:
        try:
            content = Path(file_name).read_text().strip()
        except OSError as exc:
            raise ImproperlyConfigured(f"{name}_FILE={file_name!r} cannot be read: {exc}") from None
        if not content:
            raise ImproperlyConfigured(f"{name}_FILE={file_name!r} is empty.")
        return content
    return direct or None


def data_dir(environ=None) -> Path:
    """The directory for the embedded database, the generated secret and certificates."""
    path = Path(env_str("SAM_DATA_DIR", "var", environ)).expanduser().resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ImproperlyConfigured(f"SAM_DATA_DIR={str(path)!r} cannot be created: {exc}") from None
    return path


def secret_key(directory: Path, environ=None) -> str:
    """``SAM_SECRET_KEY`` (or ``_FILE``); else a key generated once and kept in the data dir."""
    configured = env_secret("SAM_SECRET_KEY", environ)
    if configured:
        if len(configured) < 32:
            raise ImproperlyConfigured("SAM_SECRET_KEY must be at least 32 characters long.")
        return configured
    key_file = directory / "secret_key"
    if key_file.exists():
        return key_file.read_text().strip()
    key = secrets.token_urlsafe(50)
    # O_EXCL: two processes starting at once must not overwrite each other's key.
    try:
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return key_file.read_text().strip()
    with os.fdopen(fd, "w") as handle:
        handle.write(key)
    return key


def database_config(directory: Path, environ=None) -> dict:
    """Django ``DATABASES['default']`` from ``DATABASE_URL``; SQLite in the data dir if unset."""
    url = env_str("DATABASE_URL", None, environ)
    if url is None:
        return _sqlite(directory / "sam.sqlite3")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in {"postgres", "postgresql", "pgsql"}:
        name = unquote(parts.path.lstrip("/"))
        if not name:
            raise ImproperlyConfigured(
                f"DATABASE_URL={_redact(url)!r} names no database; "
                "use postgres://user:password@host:5432/dbname."
            )
        try:
            port = parts.port
        except ValueError:
            raise ImproperlyConfigured(f"DATABASE_URL={_redact(url)!r} has a bad port.") from None
        options = dict(parse_qsl(parts.query))
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": name,
            "USER": unquote(parts.username or ""),
            "PASSWORD": unquote(parts.password or ""),
            "HOST": parts.hostname or "",
            "PORT": str(port or ""),
            "CONN_MAX_AGE": env_int("SAM_DB_CONN_MAX_AGE", 60, minimum=0, environ=environ),
            "CONN_HEALTH_CHECKS": True,
            "OPTIONS": options,
        }
    if scheme == "sqlite":
        # sqlite:////abs/path.sqlite3 is absolute, sqlite:///rel.sqlite3 relative to the cwd.
        path = unquote(parts.path)
        path = path[1:] if path.startswith("/") else path
        if not path or path == "/":
            raise ImproperlyConfigured(
                f"DATABASE_URL={url!r} names no file; use sqlite:////absolute/path.sqlite3."
            )
        return _sqlite(Path(path))
    raise ImproperlyConfigured(
        f"DATABASE_URL has unsupported scheme {scheme!r}; use postgres:// or sqlite://."
    )


def _sqlite(path: Path) -> dict:
    return {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": str(path),
        # IMMEDIATE: a writer takes the lock at BEGIN, so two writers queue instead of one
        # failing with "database is locked" when it upgrades a read lock.
        "OPTIONS": {"transaction_mode": "IMMEDIATE", "timeout": 30,
                    "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"},
    }




def redis_url(environ=None) -> str | None:
    url = env_str("REDIS_URL", None, environ)
    if url is None:
        return None
    parts = urlsplit(url)
    if parts.scheme not in {"redis", "rediss", "redis+socket"}:
        raise ImproperlyConfigured(
            f"REDIS_URL has unsupported scheme {parts.scheme!r}; use redis://host:6379/0."
        )
    try:
        _ = parts.port
    except ValueError:
        raise ImproperlyConfigured(f"REDIS_URL={_redact(url)!r} has a bad port.") from None
    db = parts.path.lstrip("/")
    if db and not db.isdigit():
        raise ImproperlyConfigured(f"REDIS_URL database {db!r} must be a number (redis://h:6379/0).")
    return url


def redis_cache_location(url: str) -> str:
    """``REDIS_URL`` as redis-py's connection pool reads it (kombu's ``redis+socket://`` is
    ``unix://`` there)."""
    if url.startswith("redis+socket://"):
        return "unix://" + url[len("redis+socket://"):]
    return url


def forwarded_allow_ips(environ=None) -> list[str]:
    """``SAM_FORWARDED_ALLOW_IPS``: comma-separated proxy addresses (or ``*``); none if unset."""
    items = env_list("SAM_FORWARDED_ALLOW_IPS", [], environ)
    for item in items:
        if item == "*":
            continue
        try:
            ipaddress.ip_address(item)
        except ValueError:
            raise ImproperlyConfigured(f"SAM_FORWARDED_ALLOW_IPS: {item!r} is not an IP address "
                                       "(give comma-separated addresses, or *).") from None
    return items


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@")
    return url
