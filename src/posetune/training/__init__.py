"""`posetune train`: the job that turns DATA and a strategy into a run folder.

``job`` (the phases and the run folder), ``loop`` (the epoch loop), ``heads`` (a head on cached
features), ``checkpoint`` (save, load, stop signals).
"""

from posetune.training.job import TrainResult, train

__all__ = ["TrainResult", "train"]
