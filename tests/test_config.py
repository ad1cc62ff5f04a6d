"""The service configuration: schema, validation messages, overrides, and agreement with the learner's API."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import pytest

from streammas import OnlineMAS
from streammas.config import (
    SECTIONS,
    ConfigError,
    LearnerConfig,
    PlateauSection,
    describe_schema,
    load_config,
    parse_config,
    parse_override,
)
from streammas.learner.plateau import PlateauConfig

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "service" / "streammas.toml"


def test_example_configuration_is_valid():
    cfg = load_config(EXAMPLE)
    assert cfg.source.uri == "zmq+pull://127.0.0.1:5555"
    assert cfg.model.kind == "mlp-autoencoder"
    # the example keeps the learner's defaults: only the service's own defaults are set
    assert cfg.learner.learner_kwargs() == {"objective": "reconstruction", "on_bad_input": "skip"}
    assert cfg.sink.uri == "jsonl:scores.jsonl"
    assert (cfg.state.dir, cfg.state.every_samples, cfg.state.every_seconds, cfg.state.keep) == ("state", 100000,
                                                                                              60.0, 3)
    assert cfg.metrics.port == 9108 and cfg.metrics.host == "127.0.0.1"


def test_minimal_configuration_takes_defaults():
    cfg = parse_config('[source]\nuri = "csv:data.csv"\n')
    assert cfg.source.batch_size == 32 and cfg.source.resume
    assert cfg.model.name == "mlp-autoencoder"
    assert cfg.sink.uri is None and cfg.metrics.port is None
    assert cfg.learner.device == "auto" and cfg.learner.on_bad_input == "skip"
    assert cfg.as_dict()["source"] == {"uri": "csv:data.csv", "batch_size": 32, "max_latency_ms": 50.0,
                                       "resume": True, "drain_seconds": 5.0, "reader": "auto", "options": {}}
    assert cfg.distributed.workers == 1 and cfg.distributed.backend == "auto" and cfg.distributed.mode == "exact"


@pytest.mark.parametrize(("text", "message"), [
    ('[source]\nuri = "a"\nbatchsize = 1\n', "[source] unknown key 'batchsize'; accepted keys: uri, batch_size, "
                                              "max_latency_ms, resume, sample_shape, drain_seconds, reader, options"),
    ('[source]\nuri = "a"\n[state]\nevery = 5\n', "[state] unknown key 'every'; accepted keys: dir, every_samples"),
    ('[source]\nuri = "a"\n[learner.plateau]\nwin = 5\n', "[learner.plateau] unknown key 'win'; accepted keys: "
                                                          "window, min_drop"),
    ('[source]\nuri = "a"\n[extra]\n', "unknown section [extra]; accepted sections: source, model, learner, sink, "
                                       "state, metrics, log, distributed"),
    ('[source]\nuri = 5\n', "[source] uri must be a string, got integer 5"),
    ('[source]\nuri = "a"\nresume = "yes"\n', "[source] resume must be true or false, got string 'yes'"),
    ('[source]\nuri = "a"\nbatch_size = 2.5\n', "[source] batch_size must be an integer, got number 2.5"),
    ('[source]\nuri = "a"\nbatch_size = true\n', "[source] batch_size must be an integer, got boolean True"),
    ('[source]\nuri = "a"\noptions = 3\n', "[source] options must be a table, got integer 3"),
    ('[source]\nuri = "a"\n[learner]\nplateau = 3\n', "[learner.plateau] must be a table, got integer 3"),
    ('[source]\nuri = "a"\n[learner]\nlr = nan\n', "[learner] lr must be a finite number"),
    ('[source]\nuri = "a"\n[learner]\nlr = -1\n', "[learner] lr must be >= 0; got -1.0"),
    ('[source]\nuri = "a"\n[metrics]\nport = 70000\n', "[metrics] port must be a TCP port"),
    ('[source]\nuri = "a"\n[log]\nformat = "xml"\n', "[log] format must be one of 'text', 'json'; got 'xml'"),
    ('[source]\nuri = "a"\n[model]\nfactory = "nocolon"\n', '[model] factory must look like "package.module:function"'),
    ('[source]\nuri = "a"\n[model]\nkind = "mlp-autoencoder"\nfactory = "m:f"\n', "give either kind or factory"),
    ('[source]\nuri = "a"\n[learner]\nobjective = "classification"\n', "needs [model] factory"),
    ('[source]\nuri = "a"\n[distributed]\nworkers = 0\n', "[distributed] workers must be >= 1; got 0"),
    ('[source]\nuri = "a"\n[distributed]\nbackend = "mpi"\n', "[distributed] backend must be one of 'auto', 'gloo', "
                                                            "'nccl'; got 'mpi'"),
    ('[source]\nuri = "a"\n[learner]\ndevice = "cpu"\n[distributed]\nbackend = "nccl"\n',
     '[distributed] backend = "nccl" needs a CUDA [learner] device'),
    ('[source]\n', "[source] uri is required"),
    ('', "[source] is required"),
    ('source = 3\n', "[source] must be a table, got integer 3"),
])
def test_errors_name_the_key_and_what_it_accepts(text, message):
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    assert message in str(info.value)


def test_overrides_beat_the_file_and_are_validated():
    text = '[source]\nuri = "a"\nbatch_size = 8\n[learner.plateau]\nwindow = 5\n'
    cfg = parse_config(text, {"source.batch_size": 64, "learner.plateau.patience": 7, "learner.lr": 1})
    assert cfg.source.batch_size == 64 and cfg.learner.lr == 1.0
    assert cfg.learner.learner_kwargs()["plateau"] == {"window": 5, "patience": 7}
    with pytest.raises(ConfigError, match=r"\[source\] batch_size must be an integer, got string"):
        parse_config(text, {"source.batch_size": "many"})
    with pytest.raises(ConfigError, match="an override names section.key"):
        parse_config(text, {"batch_size": 3})
    with pytest.raises(ConfigError, match="unknown key 'nope'"):
        parse_config(text, {"state.nope": 1})


def test_parse_override_reads_toml_values():
    assert parse_override("learner.reg_lambda=10") == ("learner.reg_lambda", 10)
    assert parse_override("source.resume=false") == ("source.resume", False)
    assert parse_override('model.factory="pkg.mod:make"') == ("model.factory", "pkg.mod:make")
    assert parse_override("model.options={hidden = [32], latent = 4}") == ("model.options",
                                                                           {"hidden": [32], "latent": 4})
    assert parse_override("source.uri=zmq+pull://127.0.0.1:5555") == ("source.uri", "zmq+pull://127.0.0.1:5555")
    with pytest.raises(ConfigError):
        parse_override("nothing")


def test_unreadable_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the configuration"):
        load_config(tmp_path / "missing.toml")
    (tmp_path / "latin1.toml").write_bytes(b"[source]\nuri = \"\xe9\"\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(tmp_path / "latin1.toml")


def test_learner_keys_are_learner_arguments():
    params = inspect.signature(OnlineMAS).parameters
    for key in LearnerConfig().learner_kwargs():
        assert key in params
    service_only = {"device", "threads", "seed", "plateau"}
    for f in dataclasses.fields(LearnerConfig):
        assert f.name in params or f.name in service_only, f.name


def test_plateau_keys_are_detector_settings():
    assert {f.name for f in dataclasses.fields(PlateauSection)} == {f.name for f in dataclasses.fields(PlateauConfig)}


def test_learner_keys_are_learner_settings():
    """The [learner] table knows every OnlineMAS setting that makes sense in a file, with the same choices."""
    from streammas.config import LearnerConfig
    from streammas.learner import learner_defaults
    from streammas.learner.synapses import NORMALIZATIONS

    service_only = {"device", "threads", "seed"}
    # [learner] device is the service's own key; distributed: the group, which the service passes
    in_python_only = {"callback", "max_events", "device", "distributed"}
    keys = {f.name for f in dataclasses.fields(LearnerConfig)} - service_only
    assert keys == set(learner_defaults()) - in_python_only
    field = next(f for f in dataclasses.fields(LearnerConfig) if f.name == "omega_normalization")
    assert tuple(field.metadata["choices"]) == NORMALIZATIONS


def test_schema_description_lists_every_key():
    text = describe_schema()
    for name, cls in SECTIONS.items():
        assert f"[{name}]" in text
        for f in dataclasses.fields(cls):
            assert f"  {f.name} " in text or f"[{name}.{f.name}]" in text
    assert "[learner.plateau]" in text


def test_schema_description_shows_the_learner_defaults_not_unset():
    """`streammas run --help-config` tells what a [learner] key left out means: the learner's own default."""
    from streammas.learner import learner_defaults

    text = describe_schema()
    learner_part = text.split("[learner]\n", 1)[1].split("\n\n", 1)[0]
    plateau_part = text.split("[learner.plateau]\n", 1)[1].split("\n\n", 1)[0]
    shown = {}
    for line in (learner_part + "\n" + plateau_part).splitlines():
        key, default = line.split()[:2]
        shown[key] = default
    defaults = {**learner_defaults(), **dataclasses.asdict(PlateauConfig())}
    service_own = {"objective": "reconstruction", "on_bad_input": "skip", "device": "auto", "threads": 1, "seed": 0}
    for key, value in shown.items():
        expected = service_own.get(key, defaults.get(key))
        if expected is None:
            assert value == "(unset)", key  # the learner's default is "none" (importance_output: the model's output)
        else:
            assert value == repr(expected).split()[0], key
    assert sum(v == "(unset)" for v in shown.values()) == 1
