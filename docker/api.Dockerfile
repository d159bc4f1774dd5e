# The prediction API for Cloud Run: listens on $PORT, keeps no state, reads the model from the
# pipeline's storage root / MLflow.
#   docker build -f docker/api.Dockerfile -t emotion-api .
#   docker run -p 8080:8080 -e EMOTION_PIPELINE_ROOT=gs://bucket/out \
#     -e MLFLOW_TRACKING_URI=http://mlflow:5000 emotion-api
# The base image is pinned twice: an exact Python release and Debian suite (3.11.15, trixie), and
# the digest of that tag's multi-platform index, so a rebuild gets the very same base. To move on
# (a security update), take the new digest from `docker buildx imagetools inspect
# python:3.11.X-slim-trixie` and change both here.
FROM python:3.11.15-slim-trixie@sha256:3c35dbe0205e9428cdd671c078cc6c824fc20c86591646eb91c0cdc6c86fb8bd

WORKDIR /app
# KERAS_HOME: ResNet50's ImageNet weights are baked in there (below), where the runtime user finds
# them; without it Keras looks in that user's ~/.keras and downloads 94 MB on every cold start.
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PORT=8080 DEEPFACE_HOME=/opt/deepface \
    KERAS_HOME=/opt/keras TF_CPP_MIN_LOG_LEVEL=2

COPY requirements/constraints.txt requirements/no-deps.txt requirements/
RUN pip install --no-cache-dir uv==0.13.9 \
    && uv pip install --system --no-cache -r requirements/constraints.txt \
    && uv pip install --system --no-cache --no-deps -r requirements/no-deps.txt

COPY pyproject.toml README.md ./
COPY emotion_pipeline emotion_pipeline
RUN uv pip install --system --no-cache --no-deps . \
    && python -c "from emotion_pipeline.labelling import teachers; teachers.check_weights()"

# Bake every weight into the image, through the functions the API calls at start: DeepFace's
# emotion model, the detectors (the API detects with the detector its model was trained with: YuNet,
# the default, or MTCNN; another detector downloads its weights on its first request), ResNet50's
# ImageNet weights. A cold start downloads nothing.
RUN python -c "from emotion_pipeline.labelling.faces import build_models, detect_faces; import numpy as np; \
build_models(('emotion',)); [detect_faces(np.zeros((64, 64, 3), np.uint8), d) for d in ('yunet', 'mtcnn')]" \
    && python -c "from emotion_pipeline.modeling.embedding import keras_cache, resnet50, IMAGENET_FILE; \
resnet50('imagenet'); assert (keras_cache() / IMAGENET_FILE).is_file()"

RUN useradd --create-home app && chown -R app /opt/deepface /opt/keras
USER app
EXPOSE 8080
# One worker per container: Cloud Run scales containers, each loads the models once.
# 0.0.0.0: the container is reached through Cloud Run, whose IAM (--no-allow-unauthenticated) is the
# API's only authentication.
CMD exec emotion-pipeline serve --root "$EMOTION_PIPELINE_ROOT" --host 0.0.0.0 --port "$PORT" --workers 1
