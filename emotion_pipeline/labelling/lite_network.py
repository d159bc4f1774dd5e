"""A small Keras network run on the CPU through LiteRT, TensorFlow's runtime for small models.

The second teacher (the mini-Xception, ``teachers``) is a network of depthwise-separable convolutions
on 64x64 faces. TensorFlow's own CPU kernels ran it at about 1.3 ms a face on annotate's batches;
LiteRT with its XNNPACK kernels runs the same network at about 0.45 ms, which is what keeps annotate
with both teachers near the speed of DeepFace alone (issue 31: ``make bench``'s teachers row). The
outputs match TensorFlow's to about 1e-6.

On a machine with a GPU, TensorFlow keeps the network (``teachers`` only comes here without one):
LiteRT would pin it to the CPU of a GPU worker.

Converting takes about 3 s, and every Airflow task is a new process, so the converted network is
kept in the state home (``cache/``), named after the weights' hash and TensorFlow's version.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import threading
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


class LiteNetwork:
    """A converted network as a callable: a float32 batch in, its outputs out. One interpreter,
    taken in turns (the API's threads and the gold check may share it)."""

    def __init__(self, flatbuffer: bytes, threads: int | None = None) -> None:
        from ai_edge_litert.interpreter import Interpreter

        # Every core this process may use, up to 4: on 2 cores, annotate with both teachers ran at
        # 0.96-1.00 of DeepFace alone with 2 threads and 0.89-0.94 with 1 (make bench, six runs each).
        threads = threads or min(4, len(os.sched_getaffinity(0)))
        self._interpreter = Interpreter(model_content=flatbuffer, num_threads=threads)
        self._input = self._interpreter.get_input_details()[0]["index"]
        self._output = self._interpreter.get_output_details()[0]["index"]
        self._batch = -1
        self._lock = threading.Lock()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        with self._lock:
            if len(batch) != self._batch:  # buffers sized for this batch (annotate's batches vary a little)
                self._interpreter.resize_tensor_input(self._input, list(batch.shape))
                self._interpreter.allocate_tensors()
                self._batch = len(batch)
            self._interpreter.set_tensor(self._input, batch)
            self._interpreter.invoke()
            return self._interpreter.get_tensor(self._output).copy()


def convert(model) -> bytes:
    """The Keras ``model`` as a LiteRT flatbuffer (its batch size stays free: ``LiteNetwork`` sizes it)."""
    import tensorflow as tf

    with contextlib.redirect_stdout(io.StringIO()):  # Keras' export prints the whole signature
        return tf.lite.TFLiteConverter.from_keras_model(model).convert()


def cached_network(model, cache_file: Path) -> LiteNetwork:
    """``model`` as a LiteNetwork, converted once per cache file. A cache file LiteRT cannot read
    (cut short, altered) is converted again; a cache folder that cannot be written only costs time."""
    with contextlib.suppress(OSError, ValueError, RuntimeError):
        return LiteNetwork(cache_file.read_bytes())
    flatbuffer = convert(model)
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=cache_file.parent, delete=False) as part:
            part.write(flatbuffer)
        os.replace(part.name, cache_file)  # whole or not at all: workers start side by side
    except OSError as err:
        log.info("could not keep the converted network in %s (%s): converting again next time", cache_file, err)
    return LiteNetwork(flatbuffer)
