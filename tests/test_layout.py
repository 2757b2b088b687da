"""Memory layout: models run channels_last (NHWC) on every device; run folders store contiguous weights."""

from __future__ import annotations


def test_models_run_channels_last_and_save_contiguous(tiny_run, tmp_path):
    """place() puts convolutions in NHWC on every device (the faster layout on CPU too); the run folder's
    weights are stored contiguous and load back into a contiguous model unchanged."""
    import torch
    from safetensors.torch import load_file

    import posetune
    from posetune.backbones import build_model
    from posetune.run import RunDir

    clf = posetune.load(tiny_run, device="cpu")
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
