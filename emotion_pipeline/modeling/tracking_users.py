"""The users of docker-compose's MLflow server (MLflow's basic-auth app), set once per ``docker compose
up`` by the ``mlflow-init`` service with the admin's login:

* ``pipeline`` (``MLFLOW_PIPELINE_PASSWORD``): the Airflow workers' user. MLflow gives a user MANAGE on
  what it creates (the experiment, the runs, the registered model); an experiment or registered model
  that existed before (a deployment from before the login, or one the admin made) is granted to it.
* ``reader`` (``MLFLOW_READER_PASSWORD``): the API's and the dashboard's. It reads (the server's
  default permission is READ) and can neither log nor move the ``champion`` alias.

Every password is set from the environment each time, so rotating one is: change it in ``.env``, then
``docker compose up -d`` (this sets it; the services that use it are recreated with it). The admin's
too: MLflow reads ``MLFLOW_AUTH_ADMIN_PASSWORD`` only when it first creates the admin, so this sets the
admin's password in the server's user store directly (``MLFLOW_AUTH_CONFIG_PATH`` names it), before
logging in with it.

    python -m emotion_pipeline.modeling.tracking_users   # MLFLOW_TRACKING_URI, the admin's login in
                                                         # MLFLOW_TRACKING_USERNAME/PASSWORD
"""
from __future__ import annotations

import logging
import os
import sys

from emotion_pipeline.core.config import PipelineConfig, deployment_default
from emotion_pipeline.modeling.tracking import EXPERIMENT

PIPELINE_USER = "pipeline"
READER_USER = "reader"
PASSWORD_VARIABLES = {PIPELINE_USER: "MLFLOW_PIPELINE_PASSWORD", READER_USER: "MLFLOW_READER_PASSWORD"}

log = logging.getLogger(__name__)


def ensure_users(tracking_uri: str, passwords: dict[str, str], registered_model: str) -> None:
    """Create each user of ``passwords`` or set its password; grant ``pipeline`` MANAGE on the
    pipeline's experiment and ``registered_model`` where they exist. Runs with the admin's login
    (MLFLOW_TRACKING_USERNAME/PASSWORD); idempotent."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    from mlflow.server.auth.client import AuthServiceClient

    auth = AuthServiceClient(tracking_uri)
    for user, password in passwords.items():
        try:
            auth.get_user(user)
        except MlflowException as err:
            if err.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            auth.create_user(user, password)
            log.info("MLflow user %s created", user)
        else:
            auth.update_user_password(user, password)
            log.info("MLflow user %s: password set", user)

    client = MlflowClient(tracking_uri)
    grants = []
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is not None:
        grants.append(("experiment", experiment.experiment_id))
    try:
        client.get_registered_model(registered_model)
        grants.append(("registered_model", registered_model))
    except MlflowException as err:
        if err.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
    for kind, resource in grants:
        try:
            auth.grant_user_permission(PIPELINE_USER, kind, resource, "MANAGE")
            log.info("MLflow user %s: MANAGE on %s %s", PIPELINE_USER, kind, resource)
        except MlflowException as err:
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
                raise


def set_admin_password(password: str) -> bool:
    """Set the admin's password in the user store of the server's auth config
    (``MLFLOW_AUTH_CONFIG_PATH``), as the server's own bootstrap does; False when the store has no
    admin yet (the server creates it at its first start, from ``MLFLOW_AUTH_ADMIN_PASSWORD``)."""
    from mlflow.server.auth.config import read_auth_config
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

    config = read_auth_config()
    store = SqlAlchemyStore()
    store.init_db(config.database_uri)
    try:
        admin = config.admin_username  # None: no admin configured, so none in the store either
        if admin is None or not store.has_user(admin, use_primary=True):
            return False
        store.update_user(admin, password=password)
        return True
    finally:
        store.engine.dispose()


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    missing = [v for v in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
                           *PASSWORD_VARIABLES.values()) if not os.environ.get(v)]
    if missing:
        print(f"set {', '.join(missing)}", file=sys.stderr)
        return 2
    if os.environ.get("MLFLOW_AUTH_CONFIG_PATH") and set_admin_password(os.environ["MLFLOW_TRACKING_PASSWORD"]):
        log.info("MLflow admin: password set")
    # The registered model's name as the workers' runs default to it ($EMOTION_PIPELINE_REGISTERED_MODEL).
    model = deployment_default("registered_model", PipelineConfig(source="", root="").registered_model)
    ensure_users(os.environ["MLFLOW_TRACKING_URI"],
                 {user: os.environ[variable] for user, variable in PASSWORD_VARIABLES.items()}, model)
    return 0


if __name__ == "__main__":
    sys.exit(main())
