"""The stage clock (transferlab.timings) and the user's-path benchmark that reads it (transferlab.bench_path)."""

from __future__ import annotations

import json
import time
import tomllib

import pytest

from transferlab.timings import StageClock, process_age, running, stage


def test_stages_are_exclusive_and_add_up_to_the_wall_time():
    with StageClock() as clock:
        with stage("outer"):
            time.sleep(0.03)
            with stage("inner"):
                time.sleep(0.4)
            time.sleep(0.02)
        time.sleep(0.01)
    t = clock.table()
    outer, inner = t["stages"]["outer"]["s"], t["stages"]["inner"]["s"]
    # 30 + 20 ms, not the inner 400 (bounds far apart, so a loaded machine's late wake-ups cannot blur them)
    assert 0.045 <= outer < 0.25
    assert 0.4 <= inner < 0.6
    assert abs(outer + inner + t["other_s"] - t["wall_s"]) < 1e-6
    assert t["other_s"] >= 0.01
    assert t["inclusive"]["outer"]["s"] >= outer + inner - 1e-6  # with the nested stage


def test_a_stage_entered_twice_accumulates_and_counts_entries():
    with StageClock() as clock:
        for _ in range(3):
            with stage("step"):
                time.sleep(0.005)
    assert clock.entries["step"] == 3
    assert clock.seconds["step"] >= 0.015


def test_a_stage_inside_itself_counts_once_inclusively():
    with StageClock() as clock:
        with stage("a"):
            with stage("a"):
                time.sleep(0.02)
    assert clock.inclusive["a"] == pytest.approx(clock.seconds["a"], rel=0.2)


def test_without_a_clock_nothing_is_recorded_or_synchronised():
    calls = []
    clock = StageClock(sync=lambda: calls.append(1))
    with stage("nobody listens"):
        pass
    assert running() is None and calls == [] and clock.seconds == {}


def test_the_clock_synchronises_at_every_boundary_and_stops_afterwards():
    calls = []
    with StageClock(sync=lambda: calls.append(1)) as clock:
        assert running() is clock
        with stage("x"):
            pass
    assert len(calls) == 3  # enter, leave, the clock's end
    assert running() is None


def test_an_exception_still_closes_the_stage():
    with StageClock() as clock:
        with pytest.raises(RuntimeError):
            with stage("boom"):
                raise RuntimeError("x")
        with stage("after"):
            pass
    assert set(clock.seconds) == {"boom", "after"} and clock._stack == []


def test_process_age_is_the_time_since_this_process_started():
    age = process_age()
    if age is None:
        pytest.skip("no /proc here")
    assert 0 < age < 24 * 3600


def test_the_w300_config_written_as_toml_reads_back_and_validates(tmp_path):
    from transferlab.experiments.config import load_config
    from transferlab.experiments.w300 import w300_data, write_w300_bank, write_w300_config

    bank = write_w300_bank(tmp_path / "bank", n_pairs=6)
    path = write_w300_config(tmp_path / "w.toml", bank, model="random:tiny-mistral", seeds=(0, 3), n_pairs=6)
    data = w300_data(bank, model="random:tiny-mistral", seeds=(0, 3), n_pairs=6)
    assert tomllib.loads(path.read_text()) == {k: v for k, v in data.items() if v is not None}
    cfg = load_config(str(path))
    assert [c.name for c in cfg.conditions] == ["baseline", "transfer", "noise", "wrong_layer"]
    assert cfg.seeds == [0, 3] and cfg.prompts.n == 6


def test_the_users_path_benchmark_runs_the_command_line_and_accounts_for_its_time(tmp_path, short_dir, monkeypatch):
    """``transferlab bench --path run`` in small: two fresh processes of ``transferlab run`` on a tiny model."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(short_dir))  # where the benchmark puts the server's socket
    from transferlab.bench_path import main

    result = main(
        model="random:tiny-mistral",
        n_pairs=4,
        runs=2,
        max_new_tokens=3,
        out_dir=tmp_path / "out",
        work_dir=tmp_path / "work",
        timeout=600,
        notebook=2,
        server=2,
    )
    assert [r["label"] for r in result["runs"]] == ["cold", "warm"]
    saved = json.loads((tmp_path / "out").glob("path_w4_*.json").__next__().read_text())
    assert saved["runs"][1]["label"] == "warm"
    for r in result["runs"]:
        stages = r["stages"]
        for name in ("imports", "config", "model_load", "source_capture", "decode", "scoring", "statistics", "report"):
            assert stages[name]["s"] >= 0 and stages[name]["entries"] >= 1, name
        inside = sum(v["s"] for v in stages.values())
        assert inside + r["other_s"] == pytest.approx(r["wall_s"], abs=1e-6)
        assert r["process_wall_s"] >= r["wall_s"] + r["startup_s"] - 0.05
        assert r["batches_s"] >= r["engine_s"]  # the runner's batches hold the engine's stages
        assert r["decode_paths"] == {"eager/sdpa": 4 * 4}  # every row's kernels, read from its run (CPU: eager)
        assert (tmp_path / "work" / "runs").is_dir()
        run_dirs = [p for p in (tmp_path / "work" / "runs").iterdir() if p.is_dir()]
        assert all((p / "report.md").exists() for p in run_dirs)
    first, second = result["in_process"]  # one process, one executor: the second run finds the model loaded
    assert first["stages"]["model_load"]["entries"] == 1
    assert "model_load" not in second["stages"] and second["stages"]["decode"]["entries"] >= 1
    loads, warm = result["server"]  # transferlab serve, then two `run --server` clients
    assert loads["server"]["stages"]["model_load"]["entries"] == 1
    assert "model_load" not in warm["server"]["stages"] and warm["report_written_s"] > 0
    assert len([p for p in (tmp_path / "work" / "runs").iterdir() if p.is_dir()]) == 6
    assert list(short_dir.iterdir()) == []  # the server was stopped: its socket and directory are gone


def test_the_toml_writer_round_trips_odd_keys_and_text_and_refuses_what_it_cannot_write():
    import numpy as np

    from transferlab.experiments.w300 import toml_text

    data = {
        "name": 'x😀 "quoted" \\ back\x7f\x01\n',
        "a b": 1,
        "n": np.float64(0.5),
        "t": {"k.j": "v", "l": [1, 2.5, True]},
        "c": [{"name": "z"}, {"name": "w", "plan": ""}],
        "gone": None,
    }
    back = tomllib.loads(toml_text(data))
    assert back == {k: (float(v) if k == "n" else v) for k, v in data.items() if v is not None}
    with pytest.raises(TypeError):
        toml_text({"t": {"deeper": {"x": 1}}})  # never silently dropped
