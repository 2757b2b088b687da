"""A run as a timm model folder (``export --format timm``), and pushing that folder to the Hugging Face Hub.

The folder is what timm's own loader reads, so the model needs neither posetune nor its run folder::

    model = timm.create_model("local-dir:runs/yoga/timm", pretrained=True)  # after `posetune push`: "hf-hub:USER/NAME"
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))

- ``config.json``: ``architecture`` (the timm name: posetune's ``efficientnet_lite0`` is timm's
  ``tf_efficientnet_lite0``), ``num_classes``, ``label_names`` and a ``pretrained_cfg`` with the run's
  preprocessing, in the layout of timm's ``save_for_hf``; its ``posetune`` entry says where it came from and
  holds the sha256 of the other files;
- ``model.safetensors``: the run's weights byte for byte (timm key names);
- ``README.md``: the model card (classes, data, strategy, backbone and weights, test metrics with bootstrap
  95% intervals, the confusion matrix, intended use and limits);
- ``confusion_test.png``: the run's test confusion matrix, when it has one.

After writing, the folder is loaded back with ``timm.create_model("local-dir:DIR", pretrained=True)`` and checked
against the run's model as trained: logits on random tensors, and timm's own transform + model against
posetune's preprocessing + model on real images.

>>> result = export_timm("runs/yoga")                   # doctest: +SKIP
>>> result["path"], result["ok"]                        # doctest: +SKIP
('runs/yoga/timm', True)
>>> push("runs/yoga", "you/yoga-poses", dry_run=True)["files"][0]["path"]  # doctest: +SKIP
'config.json'
"""

from posetune.hub.card import model_card
from posetune.hub.folder import DEFAULT_SUBDIR, TIMM_FILES, TimmFolder, check_folder, export_timm, timm_config
from posetune.hub.push import push

__all__ = ["DEFAULT_SUBDIR", "TIMM_FILES", "TimmFolder", "check_folder", "export_timm", "model_card", "push",
           "timm_config"]
