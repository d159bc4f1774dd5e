"""docker-compose.yml's one-shot ``airflow-init``, after ``airflow db migrate``: the UI's admin login
and the Celery result backend's own database role.

``python -m emotion_pipeline.orchestration.compose_init`` reads its secrets from the environment
``airflow-init`` alone gets (``AIRFLOW_ADMIN_PASSWORD``, ``CELERY_DB_PASSWORD``), never from its command
line (where ``ps`` and ``docker inspect`` show them), and writes no file:

- the ``admin`` user of the FAB auth manager (salted hash in the metadata DB), created on the first
  run, its password set to ``AIRFLOW_ADMIN_PASSWORD`` on every later one (.env stays the truth:
  change it there and ``docker compose up`` again);
- the PostgreSQL role ``celery`` owning the database ``celery_results``: the Celery workers store
  task results there with this role, so they never hold the metadata database's URL; ``CONNECT`` on
  Airflow's (and MLflow's) database is revoked from ``PUBLIC``, so that role cannot even open them.
"""
from __future__ import annotations

import logging
import os
import sys

log = logging.getLogger(__name__)

ADMIN = "admin"
RESULT_ROLE = "celery"
RESULT_DATABASE = "celery_results"
OTHER_PRIVATE_DATABASES = ("mlflow",)  # besides the metadata DB: CONNECT revoked from PUBLIC if it exists


def ensure_admin(password: str, username: str = ADMIN) -> str:
    """The FAB user ``username`` with the Admin role and this password; returns "created" or "updated"."""
    from airflow.providers.fab.auth_manager.cli_commands.utils import get_application_builder

    if not password:
        raise ValueError("the admin password is empty")
    with get_application_builder() as appbuilder:
        security = appbuilder.sm
        role = security.find_role("Admin")
        if role is None:  # roles are made when the app builder first syncs them
            security.sync_roles()
            role = security.find_role("Admin")
        user = security.find_user(username=username)
        if user is None:
            if not security.add_user(username, "Admin", "User", f"{username}@localhost", role, password):
                raise RuntimeError(f"FAB could not create the user {username}")
            return "created"
        if not security.reset_password(user.id, password):
            raise RuntimeError(f"FAB could not set the password of {username}")
        if role not in user.roles:
            user.roles.append(role)
            security.update_user(user)
        return "updated"


def ensure_result_backend(admin_url: str, password: str, role: str = RESULT_ROLE,
                          database: str = RESULT_DATABASE) -> None:
    """As the metadata DB's owner (``admin_url``, a SQLAlchemy URL): the login role ``role`` with this
    password (set again on every run, so .env can rotate it), the database ``database`` it owns, and
    ``CONNECT`` on the metadata DB (and MLflow's) revoked from ``PUBLIC``: only their owner and
    superusers open them. The password goes to the server as a bound parameter, never into a
    command line."""
    import psycopg2
    from psycopg2 import sql
    from sqlalchemy.engine import make_url

    if not password:
        raise ValueError("the result backend's password is empty")
    url = make_url(admin_url)
    connection = psycopg2.connect(dbname=url.database, user=url.username, password=url.password,
                                  host=url.query.get("host") or url.host, port=url.port)  # ?host=: a socket folder
    connection.autocommit = True  # CREATE DATABASE cannot run in a transaction
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,))
            verb = "ALTER" if cursor.fetchone() else "CREATE"
            cursor.execute(sql.SQL(verb + " ROLE {} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD %s")
                           .format(sql.Identifier(role)), (password,))
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
            if cursor.fetchone() is None:
                cursor.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(database),
                                                                              sql.Identifier(role)))
            private = [url.database, *OTHER_PRIVATE_DATABASES]
            cursor.execute("SELECT datname FROM pg_database WHERE datname = ANY(%s)", (private,))
            for (name,) in cursor.fetchall():
                cursor.execute(sql.SQL("REVOKE CONNECT ON DATABASE {} FROM PUBLIC").format(sql.Identifier(name)))
    finally:
        connection.close()


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    missing = [name for name in ("AIRFLOW_ADMIN_PASSWORD", "CELERY_DB_PASSWORD") if not os.environ.get(name)]
    if missing:
        print(f"compose_init: {', '.join(missing)} not set (docker-compose.yml passes them from .env)",
              file=sys.stderr)
        return 2
    from airflow.configuration import conf

    ensure_result_backend(conf.get("database", "sql_alchemy_conn"), os.environ["CELERY_DB_PASSWORD"])
    log.info("Celery result backend: role %s, database %s", RESULT_ROLE, RESULT_DATABASE)
    log.info("UI user %s %s", ADMIN, ensure_admin(os.environ["AIRFLOW_ADMIN_PASSWORD"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
