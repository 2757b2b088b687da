"""Memory layout: models run channels_last (NHWC) on every device; run folders store contiguous weights."""

from __future__ import annotations


def test_models_run_channels_last_and_save_contiguous(tiny_run, tmp_path):
    """place() puts convolutions in NHWC on every device (the faster layout on CPU too); the run folder's
    weights are stored contiguous and load back into a contiguous model unchanged."""
    import torch
    from safetensors.torch import load_file

    from posetune.backbones import build_model
    from posetune.run import Classifier, RunDir

    clf = Classifier(RunDir(tiny_run), device="cpu", fold_bn=False)
    convs = [m for m in clf.model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    run = RunDir(tmp_path / "copy")
    run.path.mkdir()
    meta = dict(RunDir(tiny_run).meta())
    run.save_model(clf.model, meta)
    state = load_file(str(run.model_file))
    assert all(t.is_contiguous() for t in state.values())
    plain = build_model(meta["arch"], len(meta["classes"]))
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

    from posetune.fusion import fold_batchnorm

    model = _perturb_bn(timm.create_model("test_efficientnet", num_classes=3))
    norms = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    folded, n = fold_batchnorm(model, (3, 64, 64))
    assert n == norms > 0
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(4, 3, 64, 64)
    with torch.inference_mode():
        assert torch.allclose(model(x), folded(x), atol=1e-5)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # the original is untouched


def test_fold_batchnorm_refuses_a_conv_whose_output_is_also_used_elsewhere():
    import torch

    from posetune.fusion import fold_batchnorm

    class Skip(torch.nn.Module):  # bn(conv(x)) + conv(x): folding the BN would change the second use
        def __init__(self):
            super().__init__()
            self.conv, self.bn = torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y

    model = _perturb_bn(Skip())
    folded, n = fold_batchnorm(model, (3, 16, 16))
    assert n == 0 and folded is model


def test_classifier_folds_for_prediction_but_export_uses_the_trained_graph(tiny_run):
    import torch

    import posetune
    from posetune.run import Classifier, RunDir

    fast = posetune.load(tiny_run, device="cpu", engine="torch")
    exact = Classifier(RunDir(tiny_run), device="cpu", fold_bn=False)
    assert fast.folded_batchnorms > 0 and exact.folded_batchnorms == 0
    batch = torch.randint(0, 256, (2, 3, fast.preprocess.size, fast.preprocess.size), dtype=torch.uint8)
    assert torch.allclose(fast.logits(batch), exact.logits(batch), atol=1e-4)
