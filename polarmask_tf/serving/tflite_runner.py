"""Runs a `.tflite` file of polarmask_tf.serving.tflite on the LiteRT interpreter.

    detector = TFLiteDetector("exports/tflite/polarmask_int8.tflite", config)
    detections = detector.predict([image_a, image_b])      # RGB uint8 arrays of any sizes

`predict` returns what inference.Predictor.predict returns (per image: boxes float32 [n, 4],
scores [n], classes int32 [n] labels 1..C, polygons [n, N, 2], original-image pixels), so
evaluation and polarmask-predict take either. `run` is the raw signature call.

The interpreter is ai_edge_litert's (the `ai-edge-litert` package, LiteRT's runtime since TF 2.20
deprecated tf.lite.Interpreter): it applies the XNNPACK delegate on CPU by default. Where that
package is not installed, tf.lite.Interpreter (still present, with a deprecation warning, in TF
2.21) runs the same file.
"""

import os

import numpy as np

from polarmask_tf.serving import tflite as tflite_export


def interpreter_class():
    """ai_edge_litert's Interpreter, else the deprecated tf.lite.Interpreter (module docstring)."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        return tf.lite.Interpreter
    return Interpreter


def make_interpreter(path, num_threads=2):
    """An interpreter for the file at `path` (interpreter_class). ValueError naming the path when it
    is missing or is not a TFLite model."""
    Interpreter = interpreter_class()
    if not os.path.isfile(path):  # local: the LiteRT interpreter opens local files only
        raise ValueError(f"{path}: no such file")
    try:
        return Interpreter(model_path=str(path), num_threads=num_threads)
    except (ValueError, RuntimeError) as error:
        raise ValueError(f"{path} is not a TFLite model: {str(error).splitlines()[0]}") from error


class TFLiteDetector:
    """One `.tflite` detector (polarmask_tf.serving.tflite's contract) and the config it was
    exported from (its data.image_size, data.resize and input size)."""

    def __init__(self, path, config, num_threads=2):
        self.path = str(path)
        self.config = config
        self.interpreter = make_interpreter(self.path, num_threads)
        signatures = self.interpreter.get_signature_list()
        found = signatures.get("serving_default", {})
        if sorted(found.get("inputs", [])) != sorted(tflite_export.INPUT_NAMES) or \
                sorted(found.get("outputs", [])) != sorted(tflite_export.OUTPUT_NAMES):
            raise ValueError(f"{self.path} is not a PolarMask TFLite export: its signatures are {signatures}, "
                             f"expected serving_default with inputs {list(tflite_export.INPUT_NAMES)} and "
                             f"outputs {list(tflite_export.OUTPUT_NAMES)}")
        self._runner = self.interpreter.get_signature_runner("serving_default")
        shape = tuple(int(side) for side in self._runner.get_input_details()["image"]["shape"])
        expected = (1, *tflite_export.input_shape(config), 3)
        if shape != expected:
            raise ValueError(f"{self.path} takes images of shape {list(shape)}, but the config's input is "
                             f"{list(expected)} (data.image_size {list(config.data.image_size)}): use the config "
                             "it was exported with")
        self.input_shape = shape

    def run(self, image, resized_size, scale):
        """The signature's outputs (dict of numpy, batch 1) for inputs as the contract states.
        ValueError for a wrong dtype or shape, naming the input and what was expected."""
        expected = {"image": (np.uint8, self.input_shape), "resized_size": (np.int32, (1, 2)),
                    "scale": (np.float32, (1, 2))}
        inputs = {"image": image, "resized_size": resized_size, "scale": scale}
        for name, value in inputs.items():
            dtype, shape = expected[name]
            value = np.asarray(value)
            if value.dtype != dtype or value.shape != shape:
                raise ValueError(f"{self.path}: input {name} must be {np.dtype(dtype).name} {list(shape)}, "
                                 f"got {value.dtype.name} {list(value.shape)}")
            inputs[name] = value
        return self._runner(**inputs)

    def predict(self, images):
        """Detections for a list of RGB uint8 images [h, w, 3] of any size (letterbox), one at a
        time: a list of dicts as inference.Predictor.predict returns."""
        results = []
        for image in images:
            image = np.asarray(image)
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
                raise ValueError(f"predict needs RGB uint8 images [h, w, 3], got {image.dtype.name} "
                                 f"{list(image.shape)}")
            found = self.run(*tflite_export.letterbox(image, self.config))
            n = int(found["num_detections"][0])
            results.append({key: found[key][0, :n] for key in ("boxes", "scores", "classes", "polygons")})
        return results
