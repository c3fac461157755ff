"""Sweeps on a real PostgreSQL server (issue 29): three sweep processes share one Optuna
study through ``hparams_search.storage=postgresql://...``; one is killed mid-trial.

The server is the one ``.ci/run`` installs and starts (Debian's ``postgresql``, on
localhost, role ``segexp``); ``SEGEXP_TEST_POSTGRES`` may name another (a URL to its
maintenance database). Each test gets a fresh database, dropped afterwards.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import optuna
import pytest

from segexp.track import study as studies
from tests.track.test_optuna_sweeper import check_shared_study, share_and_kill

SERVER = os.environ.get(
    "SEGEXP_TEST_POSTGRES", "postgresql://segexp:segexp@localhost:5432/postgres"
)
N_TRIALS = 6


@pytest.fixture
def database():
    """postgresql://.../segexp_test_<random>: created empty, dropped afterwards."""
    psycopg = pytest.importorskip("psycopg")  # the driver SQLAlchemy uses for postgresql://
    from sqlalchemy.engine import make_url

    try:
        admin = psycopg.connect(SERVER, connect_timeout=5, autocommit=True)
    except psycopg.OperationalError as error:
        pytest.skip(f"no PostgreSQL server at {SERVER} ({error}); .ci/run starts one")
    name = f"segexp_test_{secrets.token_hex(4)}"
    with admin.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE {name}")
    try:
        yield make_url(SERVER).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


def test_unreachable_database_is_one_clear_error():
    url = "postgresql://segexp:secret@localhost:1/nowhere"
    with pytest.raises(studies.StudyConfigError, match="cannot open the database") as error:
        studies.open_storage(url)
    assert "secret" not in str(error.value) and "localhost:1/nowhere" in str(error.value)


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_three_workers_share_a_postgres_study_and_a_killed_one_resumes(
    database: str, tmp_path: Path, data_dir: Path, compose_cfg
) -> None:
    """Three sweeps start together on an empty database: N trials complete between them,
    none twice; the one killed mid-trial (SIGKILL) is failed by the others' heartbeat
    check and its parameters re-queued, then run once."""
    from hydra.utils import instantiate

    instantiate(compose_cfg().data.generate)()  # generated once, before the workers read it
    killed, dirs = share_and_kill(database, tmp_path, data_dir, workers=3, n_trials=N_TRIALS)
    study = optuna.load_study(study_name="segexp", storage=studies.open_storage(database))
    check_shared_study(study, killed, dirs, N_TRIALS)
