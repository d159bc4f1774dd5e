-- MLflow's tracking store lives beside Airflow's metadata DB, in the same PostgreSQL (first start only).
CREATE DATABASE mlflow OWNER airflow;
