"""Settings: one declaration each, and what derives from it: validation, the JSON round
trip, the command line's options, the docs table."""

import json
import re
from pathlib import Path

import pytest

from imageclf.cli.options import settings_command
from imageclf.core.commands import (
    AuditSettings,
    BatchOptions,
    CalibrateSettings,
    PackSettings,
    PredictOptions,
)
from imageclf.core.config import (
    AugConfig,
    DataConfig,
    DataSource,
    OptimConfig,
    TrainConfig,
    read_settings,
)
from imageclf.core.errors import ConfigError
from imageclf.core.settings import differences, settings_markdown
from imageclf.serve.app import ServeConfig

from .helpers import run_cli

ROOT = Path(__file__).resolve().parents[1]


def test_round_trip_through_json():
    d = DataConfig.build(path="x", size=32, presize=40, aug=AugConfig(ratio=(0.75, 1.33)))
    t = TrainConfig.build(lr="3e-3", accum_steps=2, wd=0.05, sizes=(16, 32))
    assert DataConfig.from_json(json.loads(json.dumps(d.to_json()))) == d
    assert TrainConfig.from_json(json.loads(json.dumps(t.to_json()))) == t
    with pytest.raises(ConfigError, match="unknown TrainConfig settings"):
        TrainConfig.build(epochz=3)
    with pytest.raises(ConfigError, match="unknown ScheduleConfig settings"):
        TrainConfig.from_json({"schedule": {"epochz": 3}})
    assert [TrainConfig.build(lr=v).schedule.lr_rule for v in ("auto", "minimum", "3e-3")] \
        == ["auto", "minimum", None]


def test_a_config_json_of_the_flat_layout_still_reads():
    """Runs written before the settings were nested: DataSource's fields at the top of
    data, TrainConfig flat with its own copy of the seed and `accum`."""
    old = {"data": {"path": "d", "size": 32, "presize": 40, "bs": 8, "seed": 2, "csv": None,
                    "aug": {"max_rotate": 5.0, "ratio": [1.0, 1.0]}},
           "train": {"arch": "resnet34", "epochs": 3, "accum": 2, "seed": 2, "lr": "1e-3"}}
    data, train = read_settings(old, "config.json")
    assert data == DataConfig.build(path="d", size=32, presize=40, bs=8, seed=2, max_rotate=5)
    assert train == TrainConfig.build(arch="resnet34", epochs=3, accum_steps=2, lr="1e-3")


@pytest.mark.parametrize("make,needle", [
    (lambda: TrainConfig.build(lr="fast"),
     "--lr (lr in ScheduleConfig) must be a number or one of auto, valley"),
    (lambda: TrainConfig.build(lr="20"), "--lr (lr in ScheduleConfig) must be between 0 and 10"),
    (lambda: TrainConfig.build(wd=-1), "--wd (wd in OptimConfig) must be >= 0; got -1"),
    (lambda: TrainConfig.build(accum_steps=0), "--accum-steps (accum_steps in OptimConfig) "
                                               "must be >= 1; got 0"),
    (lambda: TrainConfig.build(clip_grad=0.0), "--clip-grad (clip_grad in OptimConfig) must "
                                               "be > 0; got 0.0"),
    (lambda: TrainConfig.build(precision="fp8"), "--precision (precision in OptimConfig) must "
                                                 "be one of auto, bf16, fp16, fp32; got 'fp8'"),
    (lambda: DataConfig.build(size=64, presize=32), "--presize (presize in DataConfig) must "
                                                    "be >= --size (64)"),
    (lambda: DataConfig.build(decode_workers=-1), "--decode-workers (decode_workers in "
                                                  "DataConfig) must be >= 0"),
    (lambda: DataConfig.build(csv="a.csv", label_regex="(x)"), "--label-regex"),
    (lambda: AugConfig(min_scale=0), "--min-scale (min_scale in AugConfig) must be in (0, 1]"),
    (lambda: AugConfig(max_zoom=0.5), "--max-zoom (max_zoom in AugConfig) must be >= 1"),
    (lambda: AugConfig(max_rotate=-5), "--max-rotate (max_rotate in AugConfig) must be in "
                                       "[0, 180]"),
    (lambda: AugConfig(max_warp=1.5), "must be in [0, 1)"),
    (lambda: ServeConfig(max_batch=0), "--max-batch (max_batch in ServeConfig) must be >= 1"),
])
def test_bad_values_name_the_flag_and_the_field(make, needle):
    with pytest.raises(ConfigError, match=re.escape(needle)):
        make()


def test_leaf_names_are_unique_so_flat_names_build_the_tree():
    names = [f.name for cls in (DataConfig, TrainConfig) for _, _, f in cls.leaves()]
    assert len(names) == len(set(names))
    t = TrainConfig.build(arch="resnet34", wd=0.1, accum_steps=3, mixup=0.2, out="r")
    assert (t.model.arch, t.optim.wd, t.optim.accum_steps, t.reg.mixup, t.output.out) == \
        ("resnet34", 0.1, 3, 0.2, "r")
    assert TrainConfig.build(t.flat()) == t


def test_differences_name_the_flags():
    a, b = DataConfig.build(size=32, presize=40), DataConfig.build(size=32, presize=48,
                                                                   flip_p=0.0)
    assert differences(a, b) == ["--presize: 40 there, 48 now", "--no-flip: 0.5 there, 0.0 now"]


def test_generated_options_carry_the_declared_defaults_and_build_the_settings():
    """A command taking DataConfig and TrainConfig gets one option per leaf setting, with
    the field's default (the command line's where it declares one), and receives the
    settings built from them."""
    import inspect

    seen = {}

    @settings_command(defaults={"bs": 16})
    def cmd(data: DataConfig, train: TrainConfig) -> None:
        seen["data"], seen["train"] = data, train

    params = inspect.signature(cmd).parameters
    assert params["bs"].default == 16 and params["wd"].default == 0.01
    assert params["pretrained"].default == "hub" and params["flip_p"].default is False
    assert "ratio" not in params  # cli=False: Python only
    values = {n: p.default for n, p in params.items()}
    cmd(**(values | {"path": Path("x"), "flip_p": True, "sizes": "16,32", "size": 32,
                     "presize": 40, "clip_grad": 1.0}))
    assert seen["data"].source.path == "x" and seen["data"].aug.flip_p == 0.0
    assert seen["data"].bs == 16 and seen["train"].schedule.sizes == (16, 32)
    assert seen["train"].optim.clip_grad == 1.0


def test_docs_settings_table_is_the_generated_one():
    doc = (ROOT / "docs" / "settings.md").read_text()
    assert settings_markdown(DataConfig, TrainConfig, PackSettings, PredictOptions,
                             BatchOptions, CalibrateSettings, AuditSettings, ServeConfig) in doc


def test_a_bad_flag_value_is_one_line(folder_dataset: Path, tmp_path: Path):
    r = run_cli("show-batch", str(folder_dataset), "--size", "24", "--presize", "32",
                "--max-warp", "1.5", "-o", str(tmp_path / "b.png"))
    assert r.returncode == 2 and "--max-warp (max_warp in AugConfig) must be in [0, 1); " \
        "got 1.5" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "b.png").exists()


def test_head_auto_is_timms_from_scratch_and_concat_when_fine_tuning():
    assert TrainConfig.build().model.built_head == "timm"
    assert TrainConfig.build(pretrained="hub").model.built_head == "concat"
    assert TrainConfig.build(pretrained="some/model", head="timm").model.built_head == "timm"
    assert TrainConfig.build(head="concat").model.built_head == "concat"
    with pytest.raises(ConfigError, match="--head .* must be one of auto, concat, timm"):
        TrainConfig.build(head="linear")


def test_a_tensorboard_config_reads_without_tensorboard(monkeypatch: pytest.MonkeyPatch):
    """Reading a run's settings never needs the logger's package (resume, auto-resume's
    comparison); starting the logger does."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "tensorboard" else real(name, *a))
    t = TrainConfig.build(tensorboard=True)
    assert TrainConfig.from_json(t.to_json()).output.tensorboard
    from imageclf.run.runs import train_run

    with pytest.raises(ConfigError, match="--tensorboard needs the tensorboard package"):
        train_run(DataConfig.build(path="x"), t)


def test_optim_config_is_what_the_learner_takes():
    assert OptimConfig().clip_grad is None and DataSource().path is None


def test_docs_record_tables_are_the_generated_ones():
    """Every table scripts/gen_docs.py writes is what the declarations give today."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gen_docs", ROOT / "scripts" / "gen_docs.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    for (doc, _name), text in gen.tables().items():
        assert text in (ROOT / "docs" / doc).read_text(), doc


def test_records_round_trip_and_refuse_damage():
    from imageclf.core.errors import DamagedFileError
    from imageclf.data.cache import CacheIndex, Slot
    from imageclf.run.rundir import RunMetrics, Watched

    idx = CacheIndex(2, 40, "crop", "k-1.u8", (1, 3, 40, 40), [Slot("/a.jpg", 10, 5, True, 40)])
    assert CacheIndex.from_json(json.loads(json.dumps(idx.to_json()))) == idx
    m = RunMetrics({"valid_loss": 0.5, "valid_accuracy": 0.75}, 2, 1e-3,
                   metric=Watched("valid_accuracy", 0.75, 0.75, 1))
    flat = json.loads(json.dumps(m.to_json()))
    assert flat["valid_accuracy"] == 0.75 and "final" not in flat  # the layout users read
    assert RunMetrics.from_json(flat) == m and m.accuracy == 0.75
    with pytest.raises(DamagedFileError, match="missing field.*lr"):
        RunMetrics.from_json({"epochs": 2})
    with pytest.raises(DamagedFileError, match="unknown field"):
        Slot.from_json({"path": "a", "size": 1, "mtime": 2, "colour": 3})


@pytest.mark.parametrize("build, message", [
    (lambda: PackSettings.build(quality=101), "--quality (quality in PackSettings) must be auto "
                                              "or an integer in [1, 100]; got 101"),
    (lambda: PackSettings.build(method="zoom"), "--resize-method (method in PackSettings) must "
                                                "be one of crop, squish, pad"),
    (lambda: PredictOptions.build(bs=0), "--bs (bs in PredictOptions) must be >= 1; got 0"),
    (lambda: CalibrateSettings.build(keep=1.0), "--keep (keep in CalibrateSettings) must be in "
                                                "(0, 1); got 1.0"),
])
def test_command_settings_are_checked_where_they_are_declared(build, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        build()


def test_pack_takes_its_shard_size_in_mib_on_the_command_line():
    from imageclf.cli.options import settings_command

    seen = {}

    @settings_command
    def cmd(settings: PackSettings) -> None:
        seen["s"] = settings

    cmd(presize=64, method="crop", quality="80", shard_bytes=2, workers=1, seed=3, psnr=38.0)
    assert seen["s"] == PackSettings(64, "crop", 80, 2 * 2**20, 1, 3)


def test_pack_quality_is_a_number_or_auto():
    assert PackSettings.build(quality="auto").quality == "auto"
    with pytest.raises(ConfigError, match="--quality .* must be auto or an integer in"):
        PackSettings.build(quality="best")
