"""Training data, splits, MLflow tracking and the classifier: shared by train, evaluate and serve."""
