"""Keras 3 model builders, by name: the paper's CNN and a stronger baseline beside it.

An rgb model takes uint8 images (S, S, 3) and scales them to [0, 1] itself (a ``Rescaling`` layer),
so the reader ships bytes (4x less than float32 to the device) and a saved model scores raw
cutouts. A flux model takes float32 nanomaggies (S, S, B) and applies its per-band stretch itself
(an :class:`AsinhStretch` layer holding the softening of :class:`~pipeline.learn.stretch.Stretch`),
so the stretch is saved with the model and scoring applies exactly what training did. The output
is one sigmoid unit: P(AGN), AGN = label 1 = the positive class. No backend-specific code: the
same model trains on TensorFlow or JAX.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
from keras import layers

from pipeline.errors import ConfigError
from pipeline.learn.stretch import Stretch


@keras.saving.register_keras_serializable(package="agnsurvey")
class AsinhStretch(layers.Layer):
    """``asinh(x / softening_b)`` per band (the last axis): flux in nanomaggies → what the network sees."""

    def __init__(self, bands: str, softening: list[float], **kwargs):
        super().__init__(**kwargs)
        self.stretch = Stretch(bands, tuple(softening))

    def call(self, x):  # noqa: ANN001, ANN201
        scale = keras.ops.convert_to_tensor([1.0 / s for s in self.stretch.softening], dtype=self.compute_dtype)
        return keras.ops.arcsinh(keras.ops.cast(x, self.compute_dtype) * scale)

    def get_config(self) -> dict:
        return {**super().get_config(), **self.stretch.to_dict()}


def _input_layers(image_size: int, stretch: Stretch | None) -> list:
    """The image input and its scaling: uint8 RGB → [0, 1], or flux → its asinh stretch."""
    if stretch is None:
        return [keras.Input((image_size, image_size, 3), dtype="uint8", name="image"),
                layers.Rescaling(1 / 255, name="scale")]  # fmt: skip
    return [keras.Input((image_size, image_size, len(stretch.bands)), dtype="float32", name="image"),
            AsinhStretch(stretch.bands, list(stretch.softening), name="stretch")]  # fmt: skip


PAPER_PARAMETERS = 3_312_961  # DESIGN.md: the paper's CNN on 128×128×3


def paper_cnn(image_size: int = 128, stretch: Stretch | None = None) -> keras.Model:
    """The paper's CNN: Conv 32/64/128 (3×3, ReLU, valid), each followed by MaxPool 2×2 stride 2,
    Flatten, Dense 128 ReLU, Dense 64 ReLU, Dense 1 sigmoid (3,312,961 parameters at 128 pixels, rgb)."""
    return keras.Sequential(
        [
            *_input_layers(image_size, stretch),
            layers.Conv2D(32, 3, activation="relu", padding="valid", name="conv1"),
            layers.MaxPooling2D(2, strides=2, name="pool1"),
            layers.Conv2D(64, 3, activation="relu", padding="valid", name="conv2"),
            layers.MaxPooling2D(2, strides=2, name="pool2"),
            layers.Conv2D(128, 3, activation="relu", padding="valid", name="conv3"),
            layers.MaxPooling2D(2, strides=2, name="pool3"),
            layers.Flatten(name="flatten"),
            layers.Dense(128, activation="relu", name="dense1"),
            layers.Dense(64, activation="relu", name="dense2"),
            layers.Dense(1, activation="sigmoid", dtype="float32", name="p_agn"),
        ],
        name="paper",
    )


def _residual(x: keras.KerasTensor, filters: int, stride: int, name: str) -> keras.KerasTensor:
    """A ResNet basic block: two 3×3 convolutions with batch norm, identity or 1×1 projection."""
    shortcut = x
    y = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False, name=f"{name}_conv1")(x)
    y = layers.BatchNormalization(name=f"{name}_bn1")(y)
    y = layers.Activation("relu", name=f"{name}_relu1")(y)
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv2")(y)
    y = layers.BatchNormalization(name=f"{name}_bn2")(y)
    if stride != 1 or shortcut.shape[-1] != filters:
        shortcut = layers.Conv2D(filters, 1, strides=stride, use_bias=False, name=f"{name}_proj")(shortcut)
        shortcut = layers.BatchNormalization(name=f"{name}_proj_bn")(shortcut)
    return layers.Activation("relu", name=f"{name}_out")(layers.Add(name=f"{name}_add")([y, shortcut]))


def resnet18(image_size: int = 128, stretch: Stretch | None = None) -> keras.Model:
    """A ResNet-18 (He et al. 2016; the network of Guo, Wu & Sharon 2022, the best published image
    result for this task): 7×7/2 stem, four stages of two basic blocks (64, 128, 256, 512 filters),
    global average pooling, one sigmoid unit. ~11.2 M parameters."""
    inputs, scale = _input_layers(image_size, stretch)
    x = scale(inputs)
    x = layers.Conv2D(64, 7, strides=2, padding="same", use_bias=False, name="stem_conv")(x)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.Activation("relu", name="stem_relu")(x)
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool")(x)
    for stage, filters in enumerate((64, 128, 256, 512)):
        for block in range(2):
            stride = 2 if stage > 0 and block == 0 else 1
            x = _residual(x, filters, stride, f"s{stage + 1}b{block + 1}")
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = layers.Dense(1, activation="sigmoid", dtype="float32", name="p_agn")(x)
    return keras.Model(inputs, outputs, name="resnet18")


MODELS: dict[str, Callable[[int, Stretch | None], keras.Model]] = {"paper": paper_cnn, "resnet18": resnet18}


def build_model(name: str, image_size: int = 128, stretch: Stretch | None = None) -> keras.Model:
    """The model registered as ``name`` for images of ``image_size`` pixels per side: rgb, or flux
    seen through ``stretch``."""
    try:
        builder = MODELS[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}") from None
    return builder(image_size, stretch)
