"""The paper's CNN exactly as DESIGN.md describes it, and the registry beside it."""

import keras
import numpy as np
import pytest

from pipeline.errors import ConfigError
from pipeline.learn.args import MODEL_NAMES, TrainArgs
from pipeline.learn.model import MODELS, PAPER_PARAMETERS, build_model


def test_paper_architecture_layer_by_layer():
    model = build_model("paper", 128)
    got = [(type(layer).__name__, layer.output.shape[1:]) for layer in model.layers]
    assert got == [
        ("Rescaling", (128, 128, 3)),
        ("Conv2D", (126, 126, 32)),
        ("MaxPooling2D", (63, 63, 32)),
        ("Conv2D", (61, 61, 64)),
        ("MaxPooling2D", (30, 30, 64)),
        ("Conv2D", (28, 28, 128)),
        ("MaxPooling2D", (14, 14, 128)),
        ("Flatten", (25088,)),
        ("Dense", (128,)),
        ("Dense", (64,)),
        ("Dense", (1,)),
    ]
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert all(c.kernel_size == (3, 3) and c.padding == "valid" and c.activation.__name__ == "relu" for c in convs)
    pools = [layer for layer in model.layers if isinstance(layer, keras.layers.MaxPooling2D)]
    assert all(p.pool_size == (2, 2) and p.strides == (2, 2) for p in pools)
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    assert [d.activation.__name__ for d in dense] == ["relu", "relu", "sigmoid"]
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert trainable == PAPER_PARAMETERS == 3_312_961 == model.count_params()


def test_models_take_raw_bytes_and_scale_them_to_unit_range():
    model = build_model("paper", 32)
    scale = model.get_layer("scale")
    assert scale.scale == pytest.approx(1 / 255) and model.inputs[0].dtype == "uint8"
    p = model.predict(np.full((2, 32, 32, 3), 255, np.uint8), verbose=0)
    assert p.shape == (2, 1) and ((p > 0) & (p < 1)).all()


def test_the_stronger_model_is_a_resnet18():
    model = build_model("resnet18", 64)
    assert model.output.shape[1:] == (1,)
    residual_adds = [layer for layer in model.layers if isinstance(layer, keras.layers.Add)]
    assert len(residual_adds) == 8  # four stages of two basic blocks
    assert 11_000_000 < model.count_params() < 11_400_000


def test_registry_names_match_the_config_and_unknown_names_are_refused():
    assert tuple(MODELS) == MODEL_NAMES
    with pytest.raises(ConfigError, match="unknown model 'vgg'; choose one of paper, resnet18"):
        build_model("vgg")
    with pytest.raises(ConfigError, match="train.model must be one of paper, resnet18"):
        TrainArgs(workspace="ws", model="vgg")
