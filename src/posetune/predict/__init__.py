"""Prediction: one ``Prediction`` type and one batching loop shared by two engines.

``torch_engine.Classifier`` runs model.safetensors with PyTorch; ``onnx_engine.OnnxClassifier`` runs
RUN/model.onnx through ONNX Runtime without importing torch; :func:`load` picks one
(``engine="auto"``: :func:`choose_engine`). Importing this package never imports torch.
"""

from posetune.predict.loading import ENGINES, PredictOptions, choose_engine, load, predict_paths
from posetune.predict.prediction import Prediction, collect_paths

__all__ = ["ENGINES", "Prediction", "PredictOptions", "choose_engine", "collect_paths", "load", "predict_paths"]
