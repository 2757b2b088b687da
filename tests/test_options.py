"""Options checked at the door: every bad value exits 2 with one line naming the flag, before any file is
read or written; the CLI and the Python API build the same options dataclass, with the same names."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from helpers import run_cli

import posetune
from posetune import cli
from posetune.checks import Options
from posetune.data.synth.session import SessionOptions
from posetune.errors import InvalidOption, UsageError
from posetune.options import (
    CheckOptions,
    CompareOptions,
    EvaluateOptions,
    ExportOptions,
    LrFindOptions,
    PredictOptions,
    ServeOptions,
    SynthOptions,
    TrainOptions,
)
from posetune.video.prediction import VideoOptions

CONFIGS = {
    "epochs-two.yaml": "epochs: two\n",
    "lr-text.yaml": "lr: fast\n",
    "pretrained-maybe.yaml": "pretrained: maybe\n",
    "size-huge.yaml": "image_size: 100000\n",
}

# (command line with DATA / RUN / IMG / OUT / FILE / CFG:<name> placeholders, what the one line must name)
BAD_OPTIONS = [
    ("train DATA --epochs 0", "--epochs"),
    ("train DATA --epochs -1", "--epochs"),
    ("train DATA --lr nan", "--lr"),
    ("train DATA --lr -1", "--lr"),
    ("train DATA --batch-size 0", "--batch-size"),
    ("train DATA --image-size -5", "--image-size"),
    ("train DATA --image-size 0", "--image-size"),
    ("train DATA --image-size 100000", "--image-size"),
    ("train DATA --val-fraction 1.5", "--val-fraction"),
    ("train DATA --label-smoothing 1", "--label-smoothing"),
    ("train DATA --weight-decay -0.1", "--weight-decay"),
    ("train DATA --mixup -1", "--mixup"),
    ("train DATA --ema --ema-decay 1.5", "--ema-decay"),
    ("train DATA --seed -1", "--seed"),
    ("train DATA --label-level 7", "--label-level"),
    ("train DATA --device gpu", "--device"),
    ("train DATA --precision fp8", "--precision"),
    ("train DATA --device cpu --precision fp16", "--precision"),
    ("train DATA --crop-scale 0", "--crop-scale"),
    ("train DATA --crop-scale 1.5", "--crop-scale"),
    ("train DATA --augment strong", "--augment"),
    ("train DATA --backbone pose --augment trivial", "--augment"),
    ("train DATA --strategy bogus", "--strategy"),
    ("train DATA --out FILE", "--out"),
    ("train DATA --log wandb", "--log"),
    ("train DATA --log tensorboard,tensorboard", "--log"),
    ("train DATA --log-dir OUT", "--log-dir"),
    ("train DATA --log tensorboard --mlflow-uri sqlite:///x.db", "--mlflow-uri"),
    ("train DATA --log mlflow --mlflow-uri foo://x", "--mlflow-uri"),
    ("train DATA --config CFG:epochs-two.yaml", "epochs in"),
    ("train DATA --config CFG:lr-text.yaml", "lr in"),
    ("train DATA --config CFG:pretrained-maybe.yaml", "pretrained in"),
    ("train DATA --config CFG:size-huge.yaml", "image_size in"),
    ("lr-find DATA --steps 5", "--steps"),
    ("lr-find DATA --start-lr 1 --end-lr 0.1", "--start-lr"),
    ("lr-find DATA --image-size 5000", "--image-size"),
    ("compare DATA --seeds 0", "--seeds"),
    ("compare DATA --budget-minutes -1", "--budget-minutes"),
    ("compare DATA --strategies linear,bogus", "--strategies"),
    ("compare DATA --backbones ,", "--backbones"),
    ("compare DATA --image-size 8", "--image-size"),
    ("compare DATA --log mlflow,wandb", "--log"),
    ("compare DATA --log mlflow --log-dir OUT", "--log-dir"),
    ("evaluate RUN DATA --split validation", "--split"),
    ("evaluate RUN DATA --batch-size 0", "--batch-size"),
    ("evaluate RUN DATA --min-confidence 1.5", "--min-confidence"),
    ("predict RUN IMG --top-k 0", "--top-k"),
    ("predict RUN IMG --tta --engine onnx", "--tta"),
    ("predict RUN IMG --engine tensorrt", "--engine"),
    ("predict RUN IMG --batch-size 100000", "--batch-size"),
    ("predict RUN IMG --csv DATA", "--csv"),
    ("predict RUN IMG --min-confidence -0.1", "--min-confidence"),
    ("export RUN --opset 99", "--opset"),
    ("export RUN --format torchscript --opset 12", "--opset"),
    ("export RUN --format tflite", "--format"),
    ("serve RUN --port 70000", "--port"),
    ("serve RUN --port 0", "--port"),
    ("serve RUN --max-bytes 10XB", "--max-bytes"),
    ("serve RUN --max-bytes 5GB", "--max-bytes"),
    ("serve RUN --max-pixels 0", "--max-pixels"),
    ("serve RUN --max-queue 0", "--max-queue"),
    ("serve RUN --top-k 0", "--top-k"),
    ("serve RUN --min-confidence 2", "--min-confidence"),
    ("data synth OUT --size 5", "--size"),
    ("data synth OUT --per-class -1", "--per-class"),
    ("data synth OUT --poses tree,lotus", "--poses"),
    ("data synth OUT --poses tree,tree", "--poses"),
    ("data check DATA --label-level 7", "--label-level"),
]


def snapshot(*roots: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for root in roots for p in [root, *root.rglob("*")]}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """A run-looking folder, an image, a plain file and the YAML configs: bad options must never get to read them."""
    from helpers import write_shapes

    root = tmp_path_factory.mktemp("inputs")
    write_shapes(root / "data", 2)
    (root / "run").mkdir()
    (root / "run" / "model.json").write_text("{}")
    (root / "run" / "model.safetensors").write_bytes(b"")
    (root / "file.txt").write_text("a file where a folder must go")
    for name, text in CONFIGS.items():
        (root / name).write_text(text)
    return root


def expand(line: str, inputs: Path, work: Path) -> list[str]:
    names = {"DATA": inputs / "data", "RUN": inputs / "run", "IMG": next((inputs / "data").rglob("*.jpg")),
             "OUT": work / "synth", "FILE": inputs / "file.txt"}
    args = []
    for word in line.split():
        if word.startswith("CFG:"):
            word = str(inputs / word[4:])
        args.append(str(names.get(word, word)))
    return args




def test_the_table_is_broad():
    assert len(BAD_OPTIONS) >= 20
    commands = {line.split()[0] if not line.startswith("data") else " ".join(line.split()[:2]) for line, _ in BAD_OPTIONS}
    assert commands == {"train", "lr-find", "compare", "evaluate", "predict", "export", "serve", "data synth",
                        "data check"}


@pytest.mark.parametrize("line, names", BAD_OPTIONS, ids=[line for line, _ in BAD_OPTIONS])
def test_bad_option_exits_2_with_one_line_and_leaves_nothing(line, names, inputs, tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # where a default run folder (runs/...) would appear
    before = snapshot(inputs)
    code, out, err = run_cli(monkeypatch, capsys, expand(line, inputs, work))
    assert code == 2, err
    assert err.startswith("error: ") and err.strip().count("\n") == 0, err
    assert names in err, err
    assert out == "" and "Traceback" not in err
    assert list(work.iterdir()) == [] and snapshot(inputs) == before


def test_the_console_script_gives_the_same_line(inputs, tmp_path):
    """Through `python -m posetune` (console_entry, its quick exit for evaluate): the same one line and code."""
    for line in ("train DATA --epochs 0", "evaluate RUN DATA --split validation"):
        proc = subprocess.run([sys.executable, "-m", "posetune", *expand(line, inputs, tmp_path)], cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr
        assert "must be" in proc.stderr and "Traceback" not in proc.stderr


def test_messages_say_expected_found_and_flag():
    with pytest.raises(InvalidOption, match=r"^--epochs must be an integer from 1 to 10000, not 0$"):
        TrainOptions(data=".", epochs=0).validate()
    with pytest.raises(InvalidOption, match=r"^--lr must be a number > 0 and <= 1, not nan$"):
        TrainOptions(data=".", lr=float("nan")).validate()
    with pytest.raises(InvalidOption, match=r"^--image-size must be an integer from 32 to 1024, not 100000; omit it"):
        TrainOptions(data=".", image_size=100000).validate()
    with pytest.raises(InvalidOption, match=r"^--bn must be one of frozen, train, not 'sometimes'$"):
        TrainOptions(data=".", bn="sometimes").validate()
    with pytest.raises(InvalidOption, match=r"--epochs must be an integer .*, not 3.0"):
        TrainOptions(data=".", epochs=3.0).validate()  # no silent rounding
    with pytest.raises(InvalidOption, match=r"--patience must be an integer .*, not True"):
        TrainOptions(data=".", patience=True).validate()
    with pytest.raises(ValueError):  # InvalidOption is a ValueError too, as scikit-learn's InvalidParameterError
        EvaluateOptions(run="RUN", data=".", split="validation").validate()
    with pytest.raises(InvalidOption, match=r"^--host must be an address"):
        ServeOptions(run="RUN", host=" ").validate()
    assert ServeOptions(run="RUN", max_bytes="512KiB").validate().max_bytes == 524_288


def test_config_values_are_named_by_key_and_file_and_typed(tmp_path):
    config = tmp_path / "train.yaml"
    config.write_text("epochs: two\n")
    with pytest.raises(UsageError, match=rf"^epochs in {config} must be an integer from 1 to 10000, not 'two'$"):
        TrainOptions.from_sources(config, data=".")
    assert TrainOptions.from_sources(config, data=".", epochs=3).epochs == 3  # a flag overrides the bad key
    config.write_text("lr: 1e-3\nepochs: 4\nbatch_size: 8\n")  # YAML 1.1 reads 1e-3 as a string
    opts = TrainOptions.from_sources(config, data=".")
    assert (opts.lr, opts.epochs, opts.batch_size) == (0.001, 4, 8)
    config.write_text("epochs: [1, 2]\n")
    with pytest.raises(UsageError, match="epochs in .* must be an integer"):
        TrainOptions.from_sources(config, data=".")
    config.write_text("- epochs\n")
    with pytest.raises(UsageError, match="mapping of option: value"):
        TrainOptions.from_sources(config, data=".")


def test_the_python_api_gets_the_same_checks(inputs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data, run = inputs / "data", inputs / "run"
    image = next(data.rglob("*.jpg"))
    calls = [
        (lambda: posetune.train(data, epochs=0), "--epochs"),
        (lambda: posetune.train(data, image_size=0), "--image-size"),
        (lambda: posetune.train(data, epochz=3), "epochz"),
        (lambda: posetune.lr_find(data, steps=1), "--steps"),
        (lambda: posetune.compare(data, seeds=0), "--seeds"),
        (lambda: posetune.evaluate(run, data, split="validation"), "--split"),
        (lambda: posetune.evaluate(run, data, splitt="test"), "splitt"),
        (lambda: posetune.predict_paths(run, [image], top_k=0), "--top-k"),
        (lambda: posetune.export(run, opset=99), "--opset"),
        (lambda: posetune.check_data(data, label_level=7), "--label-level"),
        (lambda: posetune.synth(tmp_path / "synth", size=5), "--size"),
    ]
    for call, name in calls:
        with pytest.raises(UsageError, match=name):
            call()
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------- the CLI and the API share names

OPTIONS = {"train": TrainOptions, "compare": CompareOptions, "lr-find": LrFindOptions, "evaluate": EvaluateOptions,
           "predict": PredictOptions, "export": ExportOptions, "serve": ServeOptions, "data check": CheckOptions,
           "data synth": SynthOptions}
OPTIONS["predict"] = VideoOptions  # what the CLI validates: PredictOptions and the video flags
EXTRA_OPTIONS = {"data synth": SessionOptions}  # `data synth --video`: a session video, its own options
# CLI parameters with no field of the same name, and why.
CLI_ONLY = {
    "json_out": "--json picks the output format, not what the command does",
    "config": "--config is posetune.train(config=PATH): the YAML holds option values, it is not one",
    "nproc": "--nproc relaunches the CLI under torchrun (one process per GPU)",
    "resume": "--resume is posetune.train(resume=RUN): the options come from RUN/config.yaml",
    "overwrite": "--overwrite is posetune.train(overwrite=True): whether to replace a run, not how to train one",
    "time_budget": "--time-budget is posetune.train(time_budget=T): it chooses the options itself, like --resume",
}
RENAMED = {"no_pretrained": "pretrained", "ema": "ema", "ema_decay": "ema"}  # --no-pretrained; --ema [--ema-decay D]
API_ONLY = {  # fields with no flag: the complete list, for the commands whose flags cover everything
    "train": set(), "compare": set(),
}


def cli_params(command: str) -> dict:
    group = typer.main.get_command(cli.app)
    for word in command.split():
        group = group.commands[word]
    return {p.name: p for p in group.params if p.name != "help"}


@pytest.mark.parametrize("command", sorted(OPTIONS))
def test_every_flag_is_a_field_of_the_options_dataclass(command):
    fields = {f.name: f for f in dataclasses.fields(OPTIONS[command])}
    if command in EXTRA_OPTIONS:
        fields |= {f.name: f for f in dataclasses.fields(EXTRA_OPTIONS[command])}
    for name, param in cli_params(command).items():
        if name in CLI_ONLY:
            continue
        field = RENAMED.get(name, name)
        assert field in fields, f"`posetune {command}` has {name} but {OPTIONS[command].__name__} has no {field}"
        default = fields[field].default_factory() if fields[field].default_factory is not dataclasses.MISSING \
            else fields[field].default
        if name not in RENAMED and param.default is not None and default is not None:
            cli_default = param.default.split(",") if isinstance(default, list) else param.default
            assert cli_default == default, f"{command} --{name}: the CLI default {param.default!r} is not {default!r}"


@pytest.mark.parametrize("command", sorted(API_ONLY))
def test_every_field_of_train_and_compare_is_a_flag(command):
    flags = {RENAMED.get(n, n) for n in cli_params(command)} - set(CLI_ONLY)
    fields = {f.name for f in dataclasses.fields(OPTIONS[command])}
    assert fields - flags == API_ONLY[command], f"fields of {command} without a flag: {fields - flags}"
    assert issubclass(OPTIONS[command], Options)


# --------------------------------------------------------------------- damaged files: one line, exit 2

DAMAGED_MODEL_JSON = {
    "not JSON": "{",
    "not an object": "[]",
    "missing keys": '{"backbone": "x"}',
    "wrong types": '{"backbone": "x", "arch": "test_efficientnet", "classes": "abc", "preprocessing": {}, '
                   '"strategy": "partial"}',
    "unknown arch": '{"backbone": "x", "arch": "no_such_arch", "classes": ["a", "b"], "strategy": "partial", '
                    '"preprocessing": {"input_size": [3, 64, 64], "mean": [0, 0, 0], "std": [1, 1, 1]}}',
}


@pytest.mark.parametrize("command", ["predict RUN IMG", "evaluate RUN DATA", "export RUN", "serve RUN"])
@pytest.mark.parametrize("damage", sorted(DAMAGED_MODEL_JSON))
def test_a_damaged_model_json_is_one_line(command, damage, inputs, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.json").write_text(DAMAGED_MODEL_JSON[damage])
    (run / "model.safetensors").write_bytes(b"")
    args = [str(run) if a == str(inputs / "run") else a for a in expand(command, inputs, tmp_path)]
    code, out, err = run_cli(monkeypatch, capsys, args)
    assert code == 2, err
    assert err.startswith("error: ") and err.strip().count("\n") == 0 and "model.json" in err, err
    assert "Traceback" not in out + err


@pytest.mark.parametrize("name, content", [("notes.txt", b"hello"), ("fake.safetensors", b"hello"),
                                           ("fake.pth", b"not a pickle")])
def test_a_weights_file_that_is_no_state_dict_is_one_line(name, content, inputs, tmp_path, monkeypatch, capsys):
    weights = tmp_path / name
    weights.write_bytes(content)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    code, out, err = run_cli(monkeypatch, capsys, ["train", str(inputs / "data"), "--backbone", "test_resnet",
                                                   "--weights", str(weights), "--image-size", "64", "--epochs", "1"])
    assert code == 2, err
    assert err.startswith("error: ") and err.strip().count("\n") == 0 and name in err, err
    assert "Traceback" not in out + err
    assert list(work.iterdir()) == []


def test_evaluate_an_empty_split_is_an_error_not_silence(tiny_run, shapes_kaggle, monkeypatch, capsys):
    code, out, err = run_cli(monkeypatch, capsys, ["evaluate", str(tiny_run), str(shapes_kaggle), "--split", "val"])
    assert code == 2 and "no 'val' images" in err and "--split train or test" in err, err
