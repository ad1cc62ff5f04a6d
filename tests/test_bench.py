"""`streammas bench step | importance | memory` run end to end (tiny settings) and report what they promise."""

import argparse
import json

import pytest

from streammas.tools.bench import importance, memory, step, timing

MLP_BYTES = 1_742_144  # the parameters of the MLP autoencoder 784-256-64-256-784, float32


def _run(module, argv, capsys):
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    assert module.run(parser.parse_args(argv)) == 0
    return capsys.readouterr().out


def test_importance_bench_json(capsys):
    out = json.loads(_run(importance, ["--quick", "--json", "--models", "mlp", "--batches", "4", "--repeats", "1",
                                       "--block", "0.002"], capsys))
    assert out["env"]["threads"] == 1 and out["env"]["clock"] == "cpu"
    (case,) = out["cases"]
    assert case["model"] == "mlp" and case["batch"] == 4
    assert set(case["seconds_per_call"]) == {"fast", "vmap", "loop"}
    assert case["max_abs_diff"] < 1e-5 * max(1.0, case["max_abs_value"])
    assert set(case["targets"]) == {"vmap", "loop"} and case["speedup"]["loop"] > 0


def test_importance_bench_table(capsys):
    text = _run(importance, ["--quick", "--models", "conv", "--batches", "3", "--repeats", "1", "--block", "0.002"],
                capsys)
    assert "vmap/fast" in text and "conv AE" in text and "OMP_WAIT_POLICY" in text


def test_step_bench_json(capsys):
    out = json.loads(_run(step, ["--quick", "--json", "--models", "mlp", "--batches", "4", "--repeats", "1",
                                 "--block", "0.002", "--widths", "9", "--width-batch", "5"], capsys))
    (case,) = out["cases"]
    assert set(case["vs_sgd"]) == {"sgd", "every", "defaults"} and case["vs_sgd"]["sgd"] == 1.0
    assert case["state_bytes"]["parameters"] > 0
    assert case["state_vs_parameters"] == pytest.approx(2.5)  # Omega in bfloat16, theta*, running importance
    assert case["state_vs_parameters_plateau_held"] == pytest.approx(3.0)  # and the plateau's weights, bfloat16
    assert all(n % 16 == 0 for name, n in case["steps_per_block"].items() if name != "sgd")
    # what each row ran while it was timed, from the learner's own counters: the importance row measured every
    # batch with the regulariser on, and its proximal step was paid; the defaults measured every 16th batch and
    # paid none (lambda 0)
    every, defaults = case["work_while_timed"]["every"], case["work_while_timed"]["defaults"]
    assert every["steps"] > 0 and every["importance_samples"] == every["steps"] * 4
    assert every["proximal_payments"] >= every["steps"] // 16 >= 1
    assert defaults["proximal_payments"] == 0 and 0 < defaults["importance_fraction"] < 1
    # the defaults against the plain torch loop that learns the same rows: batch + 2 replayed per row
    (width,) = out["widths"]
    assert width["width"] == 9 and width["rows_per_step"] == 3 * 5
    assert set(width["seconds_per_step"]) == {"plain", "defaults", "peer", "scaling", "replay"}
    assert width["memory_samples"]["defaults"] == width["memory_samples"]["peer"]  # the same bytes
    assert width["defaults_vs_peer"] > 0 and width["share_of_default_step"]["scaling"] > 0


def test_a_variant_that_did_not_run_what_its_label_says_stops_the_step_bench():
    from streammas.tools.bench.variants import VARIANTS, expected_work

    claims = expected_work(VARIANTS["every"][1], consolidated=True)
    before = {"steps": 0, "importance_samples": 0, "proximal_payments": 0}
    with pytest.raises(RuntimeError, match="0 proximal steps paid"):
        step._check("every", 4, before, {"steps": 32, "importance_samples": 128, "proximal_payments": 0}, claims)
    with pytest.raises(RuntimeError, match="not every one"):
        step._check("every", 4, before, {"steps": 32, "importance_samples": 8, "proximal_payments": 2}, claims)
    assert step._check("every", 4, before, {"steps": 32, "importance_samples": 128, "proximal_payments": 2},
                       claims)["importance_fraction"] == 1.0


def test_step_bench_table_with_breakdown(capsys):
    text = _run(step, ["--models", "mlp", "--batches", "2", "--repeats", "1", "--block", "0.002", "--no-memory",
                       "--widths", "9"], capsys)
    # the baseline is named after the learner's default optimizer (streammas.tools.bench.variants.OPTIMIZER): Adam
    assert "plain Adam step" in text and "separate eval forward" in text and "state bytes" in text
    # every row that runs the regulariser says so, and its proximal step was paid while it was timed
    rows = [line for line in text.splitlines() if "regulariser on" in line]
    assert len(rows) >= 5 and all(int(line.split(" / ")[-1].split()[0]) > 0 for line in rows)
    assert "practitioner's torch loop, the same rows" in text and "input scaling inside a default step" in text


def test_river_bench_times_one_sample_and_one_dataframe_at_a_time(capsys):
    from streammas.tools.bench import river

    out = json.loads(_run(river, ["--json", "--widths", "9", "--samples", "20", "--frame-rows", "20", "--repeats",
                                  "1"], capsys))
    (case,) = out["cases"]
    assert set(case["seconds_per_sample"]) == {"ours_one", "frame", "tensor"} and case["frame_vs_tensor"] > 0
    assert not case["deep_river"] and "vs_deep_river" not in case  # measured only with --deep-river-python


def test_memory_bench_json(capsys):
    out = json.loads(_run(memory, ["--json", "--samples", "640", "--batch", "16", "--checkpoints", "4"], capsys))
    stream = out["stream"]
    readings = stream["readings"]
    assert stream["samples"] == 640 and len(readings) >= 4
    # Readings in bytes: the process holds at least the model and the learner's state (Omega, theta*, running
    # importance, the plateau's weights: 2.5 to 3 times the parameters), and its peak is at least every reading.
    assert all(r["state_bytes"] >= 2.5 * MLP_BYTES and r["rss"] > r["state_bytes"] + MLP_BYTES for r in readings)
    assert stream["peak_rss"] >= max(r["rss"] for r in readings)
    after = [r["rss"] for r in readings if r["step"] >= stream["steps"] // 10]
    assert stream["warm_rss"] == after[0] and stream["max_rss_after_warmup"] == max(after)
    assert stream["rss_growth"] == pytest.approx(max(after) / after[0] - 1.0)
    assert stream["target"] == {"max_growth": 0.05, "met": True}  # flat after the warm-up


@pytest.mark.slow
def test_peak_memory_of_one_variant_in_a_fresh_process():
    # at least the model (1.7 MB) and the learner's state (2.5 times that) it built
    peak = memory.child_peak_rss("mlp", 4, "defaults", steps=2, seed=0, threads=1)
    assert peak > 3.5 * MLP_BYTES
    # and above plain SGD's peak (the same model, its gradients, the same batches) by at least that state
    assert peak - memory.child_peak_rss("mlp", 4, "sgd", steps=2, seed=0, threads=1) >= 2.5 * MLP_BYTES


def test_arguments_survive_a_trip_to_a_child_process():
    parser = argparse.ArgumentParser()
    step.add_arguments(parser)
    args = parser.parse_args(["--threads", "2", "--models", "mlp", "--quick", "--block", "0.5"])
    argv = timing.rebuild_argv(step.add_arguments, args)
    assert vars(parser.parse_args(argv)) == vars(args)


def test_the_dispatcher_lists_every_benchmark():
    from streammas.tools import bench

    parser = argparse.ArgumentParser()
    try:
        bench.add_arguments(parser)
    except ImportError:  # another benchmark's optional dependency is missing: ours are checked above
        pytest.skip("a benchmark module could not be imported")
    args = parser.parse_args(["importance", "--quick", "--models", "mlp"])
    assert args.benchmark == "importance" and args.quick
    assert {"step", "importance", "memory", "ingest", "daemon", "river", "scale"} <= set(bench.BENCHMARKS)
    assert "memory" in parser.format_help()  # every help text formats (argparse reads "%" as a format)
    subparsers = parser._subparsers._group_actions[0].choices
    for name in ("step", "importance", "memory"):
        assert subparsers[name].format_help(), name


@pytest.mark.slow  # two worker processes through gloo
def test_scale_bench_measures_one_and_two_workers(capsys):
    from streammas.tools.bench import scale

    out = json.loads(_run(scale, ["--json", "--models", "mlp", "--steps", "8", "--repeats", "1", "--quality-steps",
                                  "50", "--average-every", "4", "--daemon", "--daemon-rows", "3000"], capsys))
    assert set(out) == {"mlp-exact", "mlp-average", "daemon"}
    # the service itself, as a subprocess with 1 and 2 workers: every run timed from its own log
    daemon = out.pop("daemon")
    assert set(daemon) == {"1 worker", "2 workers, exact", "2 workers, average"}
    assert daemon["1 worker"]["efficiency"] == 1.0
    assert all(r["seconds"] > 0 and r["samples_per_s"] > 0 for r in daemon.values())
    for mlp in out.values():
        assert mlp["parameters"] > 0 and mlp["samples_per_s"]["1"] > 0 and mlp["samples_per_s"]["2"] > 0
        assert mlp["efficiency_2"] > 0 and mlp["allreduce_share_of_step"] > 0
        assert 0 < mlp["estimated_efficiency"]["64"] <= mlp["estimated_efficiency"]["8"] <= 1
        assert all(0 < e < 10 for e in mlp["heldout_error"]["1"] + mlp["heldout_error"]["2"])
    # the exact mode learns what one worker with the group's batch learns
    exact = out["mlp-exact"]["heldout_error"]
    assert exact["2"] == pytest.approx(exact["1"], rel=1e-3)
    # the same single worker is the baseline of both modes; averaging every 4 steps moves less than exact per step
    assert out["mlp-average"]["samples_per_s"]["1"] == out["mlp-exact"]["samples_per_s"]["1"]
    assert out["mlp-average"]["estimated_efficiency"]["64"] > out["mlp-exact"]["estimated_efficiency"]["64"]


@pytest.mark.slow  # two daemons as subprocesses
def test_daemon_bench_runs_the_service_on_a_csv_file_against_the_embedded_learner(capsys):
    from streammas.tools.bench import daemon

    out = json.loads(_run(daemon, ["--json", "--rows", "3000", "--repeats", "1"], capsys))
    assert set(out["runs"]) == {"tensors", "csv source", "daemon", "daemon inline"}
    for name, runs in out["runs"].items():
        assert len(runs) == 1 and runs[0]["samples_per_s"] > 0, name
    for name in ("daemon", "daemon inline"):  # every row scored in the sink (the bench checks it)
        daemon = out["median"][name]
        assert 0 < daemon["startup_s"] < 120 and daemon["shutdown_s"] >= 0
    assert out["verdict"] in ("met", "MISSED", "within noise") and len(out["daemon_vs_tensors"]) == 1
