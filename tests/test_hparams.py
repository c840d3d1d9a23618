"""TensorBoard HParams of a search's runs (tune/progress.write_run_hparams, ict_core/events.write_hparams): the
config keys that vary in the experiment and the final metrics, read back from the event files TensorBoard reads."""
from __future__ import annotations

from pathlib import Path

import pytest

from ict_core.config import load_config
from tune.progress import hparam_keys, write_run_hparams
from tune.results import trial_rows
from tune.plan import resolve_plan
from tune.store import Store, seed_folder
from tune.trial import resolved_flat


def read_hparams(run_dir: Path) -> tuple[dict, dict]:
    """(hparams, {scalar tag: last value}) of a run's TensorBoard events, as TensorBoard's HParams plugin reads
    them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    values = {}
    for content in acc.PluginTagToContent("hparams").values():
        data = plugin_data_pb2.HParamsPluginData.FromString(content)
        for name, value in data.session_start_info.hparams.items():
            values[name] = value.number_value if value.WhichOneof("kind") == "number_value" else value.string_value
    scalars = {tag: acc.Scalars(tag)[-1].value for tag in acc.Tags()["scalars"]}
    return values, scalars


def test_the_keys_that_vary_in_a_plan_are_its_hparams():
    keys = hparam_keys(resolve_plan("c_scaling", "smoke"))
    assert keys[0] == "loss.huber_c" and {"data.name", "data.resolution"} <= set(keys)
    assert "optim.lr" not in keys and "train.total_steps" not in keys  # the same in every stratum
    assert hparam_keys(resolve_plan("dropout", "smoke"))[:1] == ["network.dropout"]


def test_a_recorded_run_gets_its_configuration_and_final_metrics_as_hparams(tmp_path):
    from ict_core.trainer import train

    exp = tmp_path / "exp"
    rel = seed_folder("digits", "t1", 0)
    cfg = load_config("tiny", {"train.total_steps": 20, "eval.every": 20, "eval.num_samples": 50,
                               "eval.cache_dir": str(tmp_path.parent / "featnet-cache"), "loss.huber_c": 0.02,
                               "network.channel_mult": [1, 2]})
    train(cfg, run_dir=exp / "runs" / rel)
    rows, _ = trial_rows(Store(str(exp / "runs")), experiment="e", space="s", stratum="digits", config_id="t1",
                         seeds=[0], known_config=resolved_flat(cfg))
    (row,) = rows
    assert write_run_hparams(exp, row, ["loss.huber_c", "network.channel_mult", "data.name"])
    values, scalars = read_hparams(exp / row["run_dir"])
    assert values == {"stratum": "digits", "status": "completed", "loss.huber_c": pytest.approx(0.02),
                      "network.channel_mult": "1,2", "data.name": "digits"}
    assert scalars["hparams/final_fd"] == pytest.approx(row["final_fd"], rel=1e-6)
    assert scalars["hparams/steps"] == 20 and "eval/fd" in scalars  # beside the run's own scalars
    # A run folder elsewhere (remote storage) is left alone.
    assert not write_run_hparams(exp, {**row, "run_dir": "s3://bucket/x"}, ["loss.huber_c"])
