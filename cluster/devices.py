"""Which devices a training process uses, and the Keras distribution over them.

Must run before Keras first touches its backend's devices: JAX fixes its CPU device count when it
initialises, TensorFlow its logical devices. One node, several devices: TensorFlow's
``MirroredStrategy``, or JAX's ``keras.distribution.DataParallel``; several processes (one per
Dask worker): JAX's multi-process runtime (``jax.distributed``, gloo collectives on CPU, NCCL on
GPU) under ``DataParallel`` over every process's devices. Keras 3 does not support TensorFlow's
``MultiWorkerMirroredStrategy`` (keras-team/keras#20585), so several processes need JAX.

An accelerator that was asked for and is missing is an error, never a quiet CPU run.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass


class DeviceError(RuntimeError):
    """The devices asked for are not there; the message says what is and what to do."""


@dataclass(frozen=True)
class Processes:
    """This process's place among several training processes (one per Dask worker)."""

    index: int
    count: int
    coordinator: str  # host:port of process 0's coordination service


def backend() -> str:
    """Keras' backend name as Keras will choose it (``KERAS_BACKEND``, else its config, else TF)."""
    import keras

    return keras.backend.backend()


def prepare(accelerator: str, devices: int | None, processes: Processes | None = None) -> None:
    """Set up the backend's devices before Keras uses them: logical CPU devices for
    ``accelerator="cpu"`` with ``devices`` > 1, and the multi-process runtime for ``processes``."""
    name = os.environ.get("KERAS_BACKEND", "")
    if accelerator == "cpu" and (devices or 1) > 1:
        if name == "jax" or processes is not None:
            flags = os.environ.get("XLA_FLAGS", "")
            os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={devices}".strip()
            os.environ["JAX_PLATFORMS"] = "cpu"
        else:
            import tensorflow as tf

            cpu = tf.config.list_physical_devices("CPU")[0]
            with contextlib.suppress(RuntimeError):  # already initialised: checked in placement()
                tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * devices)
    if accelerator == "cpu" and (name == "jax" or processes is not None):
        os.environ["JAX_PLATFORMS"] = "cpu"
    if processes is not None:
        import jax

        jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU collectives; GPUs use NCCL
        jax.distributed.initialize(
            coordinator_address=processes.coordinator, num_processes=processes.count, process_id=processes.index
        )


def _has_jax_gpu() -> bool:
    if os.environ.get("JAX_PLATFORMS", "") == "cpu":
        return False
    try:
        import jax

        return bool(jax.devices("gpu"))
    except RuntimeError:
        return False


def gpus() -> list:
    """The GPUs the backend sees on this node."""
    if backend() == "jax":
        return [] if not _has_jax_gpu() else __import__("jax").local_devices(backend="gpu")
    import tensorflow as tf

    return tf.config.list_physical_devices("GPU")


@dataclass(frozen=True)
class Placement:
    """Where a model trains: device kind, devices per process, processes; ``total`` devices."""

    kind: str
    local: int
    processes: int

    @property
    def total(self) -> int:
        return self.local * self.processes

    def describe(self) -> str:
        where = f"{self.local} {self.kind.upper()}{'s' if self.local > 1 else ''}"
        return where if self.processes == 1 else f"{self.processes} processes x {where}"


def placement(accelerator: str, devices: int | None, processes: Processes | None = None) -> Placement:
    """Check the devices asked for against those there, after :func:`prepare`."""
    found = gpus() if accelerator != "cpu" else []
    n_proc = processes.count if processes else 1
    if accelerator == "gpu" and not found:
        raise DeviceError(
            "--accelerator gpu: no GPU is visible to Keras' backend "
            f"({backend()}); check CUDA_VISIBLE_DEVICES and that the CUDA build of the backend is installed, "
            "or drop --accelerator gpu to train on the CPU"
        )
    if found:
        n = devices or len(found)
        if n > len(found):
            raise DeviceError(f"--devices {n}: only {len(found)} GPU(s) are visible; use --devices {len(found)}")
        return Placement("gpu", n, n_proc)
    n = devices or 1
    if n > 1 and accelerator != "cpu":
        raise DeviceError(
            f"--devices {n}: no GPU is visible, so there are not {n} devices; to test data-parallel training on the "
            f"CPU, pass --accelerator cpu --devices {n} (logical CPU devices)"
        )
    if n > 1 and len(_cpu_devices()) < n:
        raise DeviceError(
            f"--accelerator cpu --devices {n}: the backend was initialised with {len(_cpu_devices())} CPU device(s) "
            "before training started; start a new process"
        )
    return Placement("cpu", n, n_proc)


def _cpu_devices() -> list:
    if backend() == "jax":
        import jax

        return jax.local_devices(backend="cpu")
    import tensorflow as tf

    return tf.config.list_logical_devices("CPU")


@contextlib.contextmanager
def distributed(where: Placement) -> Iterator[None]:
    """The Keras distribution for ``where``, active for the block (model creation and ``fit``)."""
    if where.total == 1:
        yield
        return
    if backend() == "jax":
        import keras

        chosen = _jax_devices(where)
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=chosen, auto_shard_dataset=False))
        try:
            yield
        finally:
            keras.distribution.set_distribution(None)
        return
    if where.processes > 1:
        raise DeviceError(
            "training in several processes needs the JAX backend (Keras 3 does not support TensorFlow's "
            "MultiWorkerMirroredStrategy, keras-team/keras#20585); set KERAS_BACKEND=jax"
        )
    import tensorflow as tf

    names = [d.name for d in tf.config.list_logical_devices(where.kind.upper())][: where.local]
    with tf.distribute.MirroredStrategy(devices=names).scope():
        yield


def _jax_devices(where: Placement) -> list[str]:
    """Keras device names of the first ``where.local`` devices of every process."""
    import jax

    chosen = []
    for process in range(where.processes):
        mine = [d for d in jax.devices() if d.process_index == process and d.platform == where.kind]
        chosen += [f"{d.platform}:{d.id}" for d in mine[: where.local]]
    return chosen
