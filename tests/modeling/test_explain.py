"""The SHAP heat maps explain exactly the pipeline's model, at one ResNet50 pass per photo."""
import numpy as np

from emotion_pipeline.modeling import explain
from emotion_pipeline.modeling.embedding import decode_photo, feature_maps, image_vectors, model_input, resnet50
from tests.conftest import FACES


def test_region_shap_values_add_up_to_the_model_output_on_the_pipelines_vector():
    resnet = resnet50("none")  # random weights (no ImageNet download here): the same graph
    photo = model_input(decode_photo((FACES / "img3.jpg").read_bytes(), 60_000_000), None)
    maps = feature_maps(resnet, photo[None], 32)
    assert maps.shape == (1, 7, 7, 2048)
    # Every region kept and pooled is the vector embed gives the head (same bits up to float sums).
    vector = image_vectors(resnet, photo[None], 32)[0]
    assert np.allclose(maps[0].mean(axis=(0, 1)), vector, rtol=1e-4, atol=1e-5)

    rng = np.random.default_rng(0)
    weights = rng.normal(size=(2048, 5)).astype(np.float32) / 40

    def head(x):  # a nonlinear head: softmax of a linear map
        logits = x @ weights
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    values, predicted = explain.region_values(head, maps[0], max_evals=300, seed=0)
    assert values.shape == (7, 7) and predicted == int(head(vector[None])[0].argmax())
    # Efficiency: the regions' values sum to f(photo) - f(nothing kept), for the predicted class.
    everything, nothing = head(vector[None])[0, predicted], head(np.zeros((1, 2048), np.float32))[0, predicted]
    assert np.isclose(values.sum(), everything - nothing, atol=1e-4)
    assert np.abs(values).max() > 0
    png = explain.image_heatmaps(head, maps, photo[None], ["happy"], max_evals=300)
    assert png.startswith(b"\x89PNG")
