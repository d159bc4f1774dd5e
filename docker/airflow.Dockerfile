# Every Airflow component of docker-compose.yml: the official Airflow 3.3.2 image (Python 3.11) with
# the project's pinned dependencies, the emotion_pipeline package, the DAG and the model weights.
#   target cpu: api-server, scheduler, dag-processor, triggerer, the default-queue worker
#   target gpu: the gpu-queue worker; the same code plus TensorFlow's CUDA libraries
#   docker build -f docker/airflow.Dockerfile --target gpu -t emotion-pipeline-airflow:gpu .
FROM apache/airflow:3.3.2-python3.11 AS cpu

USER root
# OpenCV (DeepFace's detectors) needs libGL and glib even in its headless build's imports.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*
RUN mkdir -p /opt/deepface && chown airflow:0 /opt/deepface
USER airflow
# MLflow's user store (docker-compose's mlflow-auth volume, which takes this folder's owner when new).
RUN mkdir -p /opt/airflow/mlflow-auth

ENV DEEPFACE_HOME=/opt/deepface TF_CPP_MIN_LOG_LEVEL=2 \
    EMOTION_PIPELINE_DAGS=/opt/airflow/dags EMOTION_PIPELINE_HOME=/opt/airflow/emotion-pipeline

# The same exact versions as `make install` (the set includes apache-airflow==3.3.2 itself, so pip
# keeps the image's Airflow and only adds what the pipeline needs).
COPY --chown=airflow:0 requirements/constraints.txt /opt/emotion-pipeline/requirements/constraints.txt
COPY --chown=airflow:0 requirements/no-deps.txt /opt/emotion-pipeline/requirements/no-deps.txt
RUN pip install --no-cache-dir -r /opt/emotion-pipeline/requirements/constraints.txt \
    && pip install --no-cache-dir --no-deps -r /opt/emotion-pipeline/requirements/no-deps.txt

COPY --chown=airflow:0 pyproject.toml README.md /opt/emotion-pipeline/
COPY --chown=airflow:0 emotion_pipeline /opt/emotion-pipeline/emotion_pipeline
RUN pip install --no-cache-dir --no-deps /opt/emotion-pipeline \
    && python -c "from emotion_pipeline.labelling import teachers; teachers.check_weights()"
COPY --chown=airflow:0 dags /opt/airflow/dags

# Bake the weights in: a new worker downloads nothing (DeepFace's emotion model, the YuNet (default)
# and MTCNN detectors, ResNet50's ImageNet weights into ~/.keras).
RUN python -c "from emotion_pipeline.labelling.faces import build_models, detect_faces; import numpy as np; \
build_models(('emotion',)); [detect_faces(np.zeros((64, 64, 3), np.uint8), d) for d in ('yunet', 'mtcnn')]" \
    && python -c "import keras; keras.applications.ResNet50(weights='imagenet', include_top=False)"


FROM cpu AS gpu
# TensorFlow's CUDA and cuDNN wheels, at the pinned TensorFlow version; the host needs the NVIDIA
# driver and the NVIDIA Container Toolkit (compose reserves the device).
RUN pip install --no-cache-dir -c /opt/emotion-pipeline/requirements/constraints.txt "tensorflow[and-cuda]"
