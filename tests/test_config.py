"""Settings: validation, the JSON round trip, and the command line's flags agreeing with them."""

import dataclasses
import inspect
import json
from pathlib import Path

import pytest

from imageclf.cli.options import data_config, train_config
from imageclf.config import AugConfig, DataConfig, TrainConfig, from_dict, to_dict
from imageclf.errors import ConfigError

from .helpers import run_cli


def test_round_trip_through_json():
    d = DataConfig(path="x", size=32, presize=40, aug=AugConfig(ratio=(0.75, 1.33)))
    t = TrainConfig(lr="3e-3", accum=2, wd=0.05)
    assert from_dict(DataConfig, json.loads(json.dumps(to_dict(d)))) == d
    assert from_dict(TrainConfig, json.loads(json.dumps(to_dict(t)))) == t
    with pytest.raises(ConfigError, match="unknown TrainConfig settings"):
        from_dict(TrainConfig, {"epochz": 3})
    assert [TrainConfig(lr=v).lr_rule for v in ("auto", "minimum", "3e-3")] == \
        ["auto", "minimum", None]


@pytest.mark.parametrize("make,needle", [
    (lambda: TrainConfig(lr="fast"), "--lr must be a number or one of auto, valley"),
    (lambda: TrainConfig(lr="20"), "--lr must be between 0 and 10"),
    (lambda: TrainConfig(wd=-1), "--wd must be >= 0"),
    (lambda: TrainConfig(accum=0), "--accum-steps must be at least 1"),
    (lambda: DataConfig(size=64, presize=32), "--presize (32) must be >= --size (64)"),
    (lambda: DataConfig(decode_workers=-1), "--decode-workers must be >= 0"),
    (lambda: AugConfig(min_scale=0), "--min-scale must be in (0, 1]"),
    (lambda: AugConfig(max_zoom=0.5), "--max-zoom must be >= 1"),
    (lambda: AugConfig(max_rotate=-5), "--max-rotate must be between 0 and 180"),
    (lambda: AugConfig(max_warp=1.5), "--max-warp must be in [0, 1)"),
    (lambda: AugConfig(max_lighting=1.0), "--max-lighting must be in [0, 1)"),
])
def test_bad_values_name_the_flag(make, needle):
    with pytest.raises(ConfigError, match=__import__("re").escape(needle)):
        make()


def test_cli_defaults_agree_with_the_settings():
    """Every train flag that sets a settings field has that field's default, except
    --pretrained: hub on the command line, none in Python (building settings in code never
    reaches the network); the flag's help says so."""
    from imageclf.cli.train_cmds import train

    params = inspect.signature(train).parameters
    differ = {}
    for cls in (DataConfig, TrainConfig, AugConfig):
        for f in dataclasses.fields(cls):
            if f.name in params and f.default is not dataclasses.MISSING \
                    and params[f.name].default != f.default:
                differ[f.name] = (params[f.name].default, f.default)
    assert differ == {"pretrained": ("hub", "none")}
    aug_flags = {"min_scale", "max_rotate", "max_zoom", "max_warp", "max_lighting", "no_flip"}
    assert aug_flags | {"wd", "decode_workers"} <= set(params)


def test_settings_are_built_from_the_options_by_name():
    d = data_config(Path("x"), {"size": 32, "presize": 40, "min_scale": 0.5, "no_flip": True,
                                "max_warp": 0.0, "decode_workers": 2, "unrelated": 1})
    assert (d.size, d.presize, d.decode_workers) == (32, 40, 2)
    assert (d.aug.min_scale, d.aug.flip_p, d.aug.max_warp) == (0.5, 0.0, 0.0)
    assert d.aug.max_rotate == AugConfig().max_rotate
    t = train_config({"arch": "resnet34", "wd": 0.1, "accum_steps": 3}, lr="auto")
    assert (t.arch, t.wd, t.accum, t.lr) == ("resnet34", 0.1, 3, "auto")


def test_a_bad_flag_value_is_one_line(folder_dataset: Path, tmp_path: Path):
    r = run_cli("show-batch", str(folder_dataset), "--size", "24", "--presize", "32",
                "--max-warp", "1.5", "-o", str(tmp_path / "b.png"))
    assert r.returncode == 2 and "--max-warp must be in [0, 1); got 1.5" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "b.png").exists()


def test_head_auto_is_timms_from_scratch_and_concat_when_fine_tuning():
    assert TrainConfig().model_head == "timm"
    assert TrainConfig(pretrained="hub").model_head == "concat"
    assert TrainConfig(pretrained="some/model", head="timm").model_head == "timm"
    assert TrainConfig(head="concat").model_head == "concat"
    with pytest.raises(ConfigError, match="--head must be auto, concat or timm"):
        TrainConfig(head="linear")
