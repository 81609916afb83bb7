"""sam/env.py parsers and sam/checks.py: bad configuration must stop the process, named."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from django.core.checks import Error, Warning
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from sam import checks, env

ROOT = Path(__file__).resolve().parent.parent


# --- scalars ---------------------------------------------------------------------------------

@pytest.mark.parametrize("raw", ["1", "true", "YES", " on "])
def test_bool_true(raw):
    assert env.env_bool("SAM_X", False, environ={"SAM_X": raw}) is True


@pytest.mark.parametrize("raw", ["0", "false", "No", "off", ""])
def test_bool_false(raw):
    assert env.env_bool("SAM_X", True, environ={"SAM_X": raw}) is False


def test_bool_unset_gives_default():
    assert env.env_bool("SAM_X", True, environ={}) is True


def test_bool_invalid_names_the_variable():
    with pytest.raises(ImproperlyConfigured, match="SAM_X='maybe'"):
        env.env_bool("SAM_X", False, environ={"SAM_X": "maybe"})


def test_int_parses_and_defaults():
    assert env.env_int("SAM_N", 7, environ={"SAM_N": " 42 "}) == 42
    assert env.env_int("SAM_N", 7, environ={}) == 7
    assert env.env_int("SAM_N", 7, environ={"SAM_N": ""}) == 7


@pytest.mark.parametrize(
    ("raw", "message"),
    [("ten", "SAM_N='ten' is not an integer"), ("0", "SAM_N=0 is below the minimum 1"),
     ("101", "SAM_N=101 is above the maximum 100")],
)
def test_int_invalid_or_out_of_range(raw, message):
    with pytest.raises(ImproperlyConfigured, match=message):
        env.env_int("SAM_N", 5, minimum=1, maximum=100, environ={"SAM_N": raw})


def test_int_bounds_are_inclusive():
    assert env.env_int("SAM_N", 5, minimum=1, maximum=100, environ={"SAM_N": "1"}) == 1
    assert env.env_int("SAM_N", 5, minimum=1, maximum=100, environ={"SAM_N": "100"}) == 100


def test_list_splits_and_strips():
    assert env.env_list("SAM_L", ["*"], environ={"SAM_L": " a.example, ,b.example "}) == [
        "a.example", "b.example"]
    assert env.env_list("SAM_L", ["*"], environ={}) == ["*"]


def test_str_empty_is_default():
    assert env.env_str("SAM_S", "d", environ={"SAM_S": "  "}) == "d"
    assert env.env_str("SAM_S", "d", environ={"SAM_S": "v"}) == "v"


# --- secrets ---------------------------------------------------------------------------------

def test_secret_direct_and_unset():
    assert env.env_secret("SAM_PW", environ={"SAM_PW": "s3cret"}) == "s3cret"
    assert env.env_secret("SAM_PW", environ={}) is None


def test_secret_from_file(tmp_path):
    secret = tmp_path / "pw"
    secret.write_text("from-file\n")
    assert env.env_secret("SAM_PW", environ={"SAM_PW_FILE": str(secret)}) == "from-file"


def test_secret_both_set_is_an_error(tmp_path):
    secret = tmp_path / "pw"
    secret.write_text("x")
    with pytest.raises(ImproperlyConfigured, match="SAM_PW or SAM_PW_FILE"):
        env.env_secret("SAM_PW", environ={"SAM_PW": "y", "SAM_PW_FILE": str(secret)})


def test_secret_file_missing_or_empty(tmp_path):
    with pytest.raises(ImproperlyConfigured, match="SAM_PW_FILE=.*cannot be read"):
        env.env_secret("SAM_PW", environ={"SAM_PW_FILE": str(tmp_path / "absent")})
    empty = tmp_path / "empty"
    empty.write_text("  \n")
    with pytest.raises(ImproperlyConfigured, match="SAM_PW_FILE=.*is empty"):
        env.env_secret("SAM_PW", environ={"SAM_PW_FILE": str(empty)})


def test_secret_key_generated_once_and_reused(tmp_path):
    first = env.secret_key(tmp_path, environ={})
    assert len(first) >= 50
    key_file = tmp_path / "secret_key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert env.secret_key(tmp_path, environ={}) == first


def test_secret_key_from_environment_is_not_stored(tmp_path):
    configured = "k" * 40
    assert env.secret_key(tmp_path, environ={"SAM_SECRET_KEY": configured}) == configured
    assert not (tmp_path / "secret_key").exists()


def test_secret_key_too_short(tmp_path):
    with pytest.raises(ImproperlyConfigured, match="SAM_SECRET_KEY"):
        env.secret_key(tmp_path, environ={"SAM_SECRET_KEY": "short"})


def test_data_dir_is_created(tmp_path):
    target = tmp_path / "a" / "b"
    assert env.data_dir(environ={"SAM_DATA_DIR": str(target)}) == target.resolve()
    assert target.is_dir()


# --- DATABASE_URL ----------------------------------------------------------------------------

def test_database_unset_is_sqlite_in_data_dir(tmp_path):
    config = env.database_config(tmp_path, environ={})
    assert config["ENGINE"] == "django.db.backends.sqlite3"
    assert config["NAME"] == str(tmp_path / "sam.sqlite3")


def test_database_postgres_url(tmp_path):
    config = env.database_config(
        tmp_path,
        environ={
            "DATABASE_URL": "postgresql://sam%40ops:p%2Fw@db.example:6543/sam_prod"
            "?sslmode=require&connect_timeout=5",
            "SAM_DB_CONN_MAX_AGE": "0",
        },
    )
    assert config["ENGINE"] == "django.db.backends.postgresql"
    assert (config["NAME"], config["USER"], config["PASSWORD"]) == ("sam_prod", "sam@ops", "p/w")
    assert (config["HOST"], config["PORT"]) == ("db.example", "6543")
    assert config["OPTIONS"] == {"sslmode": "require", "connect_timeout": "5"}
    assert config["CONN_MAX_AGE"] == 0


def test_database_postgres_defaults(tmp_path):
    config = env.database_config(tmp_path, environ={"DATABASE_URL": "postgres://db/sam"})
    assert (config["USER"], config["PASSWORD"], config["PORT"]) == ("", "", "")
    assert config["CONN_MAX_AGE"] == 60


def test_database_sqlite_url(tmp_path):
    path = tmp_path / "other.sqlite3"
    # the documented form: sqlite:////absolute/path.sqlite3
    config = env.database_config(tmp_path, environ={"DATABASE_URL": f"sqlite:///{path}"})
    assert config["ENGINE"] == "django.db.backends.sqlite3"
    assert Path(config["NAME"]).resolve() == path.resolve()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://u:p@db/sam", "unsupported scheme 'mysql'"),
        ("postgres://u:hunter2@db:5432/", "names no database"),
        ("postgres://u:hunter2@db:port/sam", "bad port"),
        ("sqlite://", "names no file"),
    ],
)
def test_database_url_errors(tmp_path, url, message):
    with pytest.raises(ImproperlyConfigured, match=message) as caught:
        env.database_config(tmp_path, environ={"DATABASE_URL": url})
    assert "DATABASE_URL" in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_database_conn_max_age_negative(tmp_path):
    with pytest.raises(ImproperlyConfigured, match="SAM_DB_CONN_MAX_AGE"):
        env.database_config(
            tmp_path, environ={"DATABASE_URL": "postgres://db/sam", "SAM_DB_CONN_MAX_AGE": "-1"}
        )


# --- REDIS_URL -------------------------------------------------------------------------------

def test_redis_url_unset_and_valid():
    assert env.redis_url(environ={}) is None
    assert env.redis_url(environ={"REDIS_URL": "redis://r:6379/3"}) == "redis://r:6379/3"
    assert env.redis_url(environ={"REDIS_URL": "rediss://:pw@r:6380"}) == "rediss://:pw@r:6380"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://r:6379/0", "REDIS_URL has unsupported scheme 'http'"),
        ("redis://r:6379/zero", "REDIS_URL database 'zero' must be a number"),
        ("redis://r:port/0", "REDIS_URL=.* has a bad port"),
    ],
)
def test_redis_url_errors(url, message):
    with pytest.raises(ImproperlyConfigured, match=message):
        env.redis_url(environ={"REDIS_URL": url})


# --- system checks ---------------------------------------------------------------------------

SQLITE = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
POSTGRES = {"default": {"ENGINE": "django.db.backends.postgresql", "NAME": "sam"}}


def _check(**overrides) -> list:
    # Overriding DATABASES warns that it "can lead to unexpected behavior"; the check only
    # reads the engine name and opens no connection.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with override_settings(**overrides):
            return checks.check_deployment_mode(None)


def _ids(problems) -> set[str]:
    return {problem.id for problem in problems}


def test_check_e001_redis_with_sqlite():
    problems = _check(
        DATABASES=SQLITE, REDIS_URL="redis://r:6379/0", CELERY_TASK_ALWAYS_EAGER=False,
        DEBUG=False, ALLOWED_HOSTS=["sam.example"],
    )
    assert _ids(problems) == {"sam.E001"}
    assert isinstance(problems[0], Error)


def test_check_e002_workers_without_broker():
    problems = _check(
        DATABASES=POSTGRES, REDIS_URL=None, CELERY_TASK_ALWAYS_EAGER=False,
        DEBUG=False, ALLOWED_HOSTS=["*"],
    )
    assert _ids(problems) == {"sam.E002"}
    assert "SAM_TASKS_EAGER" in problems[0].msg


def test_check_w001_wildcard_hosts_in_production():
    problems = _check(
        DATABASES=POSTGRES, REDIS_URL="redis://r:6379/0", CELERY_TASK_ALWAYS_EAGER=False,
        DEBUG=False, ALLOWED_HOSTS=["*"],
    )
    assert _ids(problems) == {"sam.W001"}
    assert isinstance(problems[0], Warning)


@pytest.mark.parametrize(
    "overrides",
    [
        # embedded default: SQLite, no broker, tasks in-process
        {"DATABASES": SQLITE, "REDIS_URL": None, "CELERY_TASK_ALWAYS_EAGER": True},
        # production: PostgreSQL + Redis + workers, named hosts
        {"DATABASES": POSTGRES, "REDIS_URL": "redis://r:6379/0",
         "CELERY_TASK_ALWAYS_EAGER": False, "ALLOWED_HOSTS": ["sam.example"]},
    ],
)
def test_check_consistent_modes_are_clean(overrides):
    assert _check(DEBUG=False, **{"ALLOWED_HOSTS": ["*"], **overrides}) == []


def test_bad_setting_stops_manage_py(tmp_path):
    environ = {**os.environ, "SAM_DEBUG": "maybe", "SAM_DATA_DIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=environ,
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode != 0
    assert "SAM_DEBUG" in result.stderr
