# The prediction API for Cloud Run: listens on $PORT, keeps no state, reads the model from the
# pipeline's storage root / MLflow.
#   docker build -f docker/api.Dockerfile -t emotion-api .
#   docker run -p 8080:8080 -e EMOTION_PIPELINE_ROOT=gs://bucket/out \
#     -e MLFLOW_TRACKING_URI=http://mlflow:5000 emotion-api
FROM python:3.11-slim

WORKDIR /app
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PORT=8080 DEEPFACE_HOME=/opt/deepface \
    TF_CPP_MIN_LOG_LEVEL=2

COPY requirements/constraints.txt requirements/no-deps.txt requirements/
RUN pip install --no-cache-dir uv==0.13.9 \
    && uv pip install --system --no-cache -r requirements/constraints.txt \
    && uv pip install --system --no-cache --no-deps -r requirements/no-deps.txt

COPY pyproject.toml README.md ./
COPY emotion_pipeline emotion_pipeline
RUN uv pip install --system --no-cache --no-deps . \
    && python -c "from emotion_pipeline.labelling import teachers; teachers.check_weights()"

# Bake DeepFace's emotion weights and the detector into the image: a cold start downloads nothing.
RUN python -c "from emotion_pipeline.labelling.faces import build_models, detect_faces; import numpy as np; \
build_models(('emotion',)); detect_faces(np.zeros((64, 64, 3), np.uint8), 'mtcnn')"

RUN useradd --create-home app && chown -R app /opt/deepface
USER app
EXPOSE 8080
# One worker per container: Cloud Run scales containers, each loads the models once.
# 0.0.0.0: the container is reached through Cloud Run, whose IAM (--no-allow-unauthenticated) is the
# API's only authentication.
CMD exec emotion-pipeline serve --root "$EMOTION_PIPELINE_ROOT" --host 0.0.0.0 --port "$PORT" --workers 1
