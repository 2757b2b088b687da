"""Speed without changing results: channels_last everywhere (run folders still store contiguous weights)
and the inference-only rewrites of fusion.py (BatchNorm folding, static 'SAME' padding)."""

from __future__ import annotations

import pytest


def test_models_run_channels_last_and_save_contiguous(tiny_run, tmp_path):
    """place() puts convolutions in NHWC on every device (the faster layout on CPU too); the run folder's
    weights are stored contiguous and load back into a contiguous model unchanged."""
    import torch
    from safetensors.torch import load_file

    from posetune.backbones import build_model
    from posetune.predict.torch_engine import Classifier
    from posetune.run import RunDir

    clf = Classifier(RunDir(tiny_run), device="cpu", optimize=False)
    convs = [m for m in clf.model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    run = RunDir(tmp_path / "copy")
    run.path.mkdir()
    meta = RunDir(tiny_run).meta()
    run.save_model(clf.model, meta)
    state = load_file(str(run.model_file))
    assert all(t.is_contiguous() for t in state.values())
    plain = build_model(meta.arch, len(meta.classes))
    plain.load_state_dict(state)
    x = torch.rand(2, 3, 32, 32)
    with torch.inference_mode():
        assert torch.allclose(plain.eval()(x), clf.model(x), atol=1e-5)


def _perturb_bn(model):
    import torch

    gen = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):  # non-trivial statistics, as after training
            m.running_mean.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    return model.eval()


def test_fold_batchnorm_keeps_outputs_and_removes_every_norm():
    import timm
    import torch

    from posetune.inference import optimize_for_inference

    model = _perturb_bn(timm.create_model("test_efficientnet", num_classes=3))
    norms = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    folded, changes = optimize_for_inference(model, (3, 64, 64), static_padding=False)
    assert changes["batchnorms_folded"] == norms > 0
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(4, 3, 64, 64)
    with torch.inference_mode():
        assert torch.allclose(model(x), folded(x), atol=1e-5)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # the original is untouched


def test_fold_batchnorm_refuses_a_conv_whose_output_is_also_used_elsewhere():
    import torch

    from posetune.inference import optimize_for_inference

    class Skip(torch.nn.Module):  # bn(conv(x)) + conv(x): folding the BN would change the second use
        def __init__(self):
            super().__init__()
            self.conv, self.bn = torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y

    model = _perturb_bn(Skip())
    folded, changes = optimize_for_inference(model, (3, 16, 16))
    assert changes["batchnorms_folded"] == 0 and folded is model


def test_classifier_folds_for_prediction_but_export_uses_the_trained_graph(tiny_run):
    import torch

    import posetune
    from posetune.predict.torch_engine import Classifier
    from posetune.run import RunDir

    fast = posetune.load(tiny_run, device="cpu", engine="torch")
    exact = Classifier(RunDir(tiny_run), device="cpu", optimize=False)
    assert fast.inference_changes["batchnorms_folded"] > 0 and not exact.inference_changes
    batch = torch.randint(0, 256, (2, 3, fast.preprocess.size, fast.preprocess.size), dtype=torch.uint8)
    assert torch.allclose(fast.logits(fast.normalize(batch)), exact.logits(exact.normalize(batch)), atol=1e-4)


@pytest.mark.parametrize("size", [64, 65])
def test_static_same_padding_matches_tf_same_at_even_and_odd_sizes(size):
    import timm
    import torch
    from timm.layers import Conv2dSame

    from posetune.inference import optimize_for_inference

    model = _perturb_bn(timm.create_model("tf_efficientnet_lite0", num_classes=3))
    same = sum(isinstance(m, Conv2dSame) for m in model.modules())
    fast, changes = optimize_for_inference(model, (3, size, size))
    assert changes["same_pads_made_static"] == same > 0
    assert not any(isinstance(m, Conv2dSame) for m in fast.modules())
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(size))
    with torch.inference_mode():  # float32 reassociation: ~1e-4 on logits of magnitude ~50 (the relative term)
        assert torch.allclose(model(x), fast(x), atol=1e-4, rtol=1e-4)
        with pytest.raises(ValueError, match="optimised for"):  # another size would be silently wrong
            fast(torch.randn(1, 3, size + 1, size + 1))
