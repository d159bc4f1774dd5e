"""Facial emotion recognition on natural photos, as plain stage functions an Airflow DAG wires up."""
from emotion_pipeline.core.config import CLASSES, EMOTIONS, PipelineConfig

__all__ = ["CLASSES", "EMOTIONS", "PipelineConfig"]
__version__ = "0.1.0"
