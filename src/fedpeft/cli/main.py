"""``fedpeft`` command line: ``fedpeft run [--config FILE] [--set k=v …] [--resume RUN_DIR]``.

User errors (bad config, missing file, corrupted run) print one sentence and exit 2.
"""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape

from fedpeft.errors import FedpeftError

if TYPE_CHECKING:
    from fedpeft.config import ExperimentConfig, PeftConfig
    from fedpeft.runtime.local import RunResult

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Federated PEFT fine-tuning.")
err_console = Console(stderr=True)


# the options every command that resolves a configuration takes
ConfigFile = Annotated[Path | None, typer.Option("--config", "-c", help="TOML config file")]
Overrides = Annotated[list[str] | None, typer.Option("--set", help="override: section.key=value")]


class Runtime(StrEnum):
    local = "local"
    flower_sim = "flower-sim"


class Tracker(StrEnum):
    tensorboard = "tensorboard"
    mlflow = "mlflow"


@contextmanager
def user_errors() -> Iterator[None]:
    try:
        yield
    except FedpeftError as e:
        # the sentence as written: a `[run]` or `[phone]` in it is not rich markup
        err_console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=err_console, show_path=False)],
        force=True,
    )
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="peft")


@app.callback()
def _root() -> None:
    """fedpeft: many clients fine-tune one frozen model by training small PEFT modules."""


@app.command()
def run(
    config: ConfigFile = None,
    set_: Overrides = None,
    resume: Annotated[
        Path | None, typer.Option(help="continue runs/<run-id> from its checkpoint")
    ] = None,
    runtime: Annotated[
        Runtime, typer.Option(help="local: in-process; flower-sim: Flower's simulation engine")
    ] = Runtime.local,
    track: Annotated[
        list[Tracker] | None,
        typer.Option(help="live tracking: tensorboard (<run>/tensorboard/) or mlflow (extra)"),
    ] = None,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="log every step (INFO), Flower's engine too")
    ] = False,
) -> None:
    """Run a federation (the embedded default: MiniLM-L6, SST-2, 10 clients, LoRA)."""
    _setup_logging(verbose)
    _interruptible()
    console = Console()
    with user_errors():
        cfg = _resolve_config(config, set_ or [], resume)
        from fedpeft.cli.progress import RichObserver, rounds_table
        from fedpeft.server.config_checks import check_names

        check_names(cfg)  # every section valid before anything is shown or loaded
        if resume is None:
            from fedpeft.config.paths import check_output_dir

            check_output_dir(cfg.run.output_dir)

        first = _first_round(resume, cfg.run.rounds)  # before trackers open or a bar is drawn
        from fedpeft.report.tracking import Observers, make_trackers

        trackers = make_trackers([t.value for t in track or []], cfg.run.output_dir, cfg.run.name)
        console.print(
            f"[bold]fedpeft[/] {cfg.model.name} · {cfg.data.dataset} · "
            f"{cfg.data.num_clients} clients · {_method_label(cfg.peft)} · "
            f"{cfg.run.rounds} rounds",
            highlight=False,
        )
        try:
            with RichObserver(console, cfg.run.rounds, first) as progress:
                observer = Observers(progress, *trackers)
                result = _runner(runtime)(cfg, resume=resume, observer=observer)
        except KeyboardInterrupt:
            err_console.print("interrupted; continue with `fedpeft run --resume <run folder>`.")
            raise typer.Exit(130) from None
        finally:
            for t in trackers:
                t.close()
    from fedpeft.report import write_report
    from fedpeft.report.fmt import num, scaled, share_of_full_model
    from fedpeft.report.markdown import privacy_lines

    with user_errors():  # the run wrote classes.json itself: its task is not loaded twice
        write_report(result.run_dir)
    console.print(rounds_table(result.rounds))
    s = result.summary
    console.print(
        f"final accuracy {num(s.get('final_accuracy'))} · "
        f"macro-F1 {num(s.get('final_macro_f1'))} · "
        f"{scaled(s.get('bytes_up_per_client_round'), 1e3, '.1f')} kB up per client per round "
        f"({share_of_full_model(s.get('up_fraction_of_full_model'))} of the full model) · "
        f"{num(s.get('wall_time_s'), '.0f')} s · "
        f"peak RSS {scaled(s.get('peak_rss_bytes'), 2**20, '.0f')} MiB",
        highlight=False,
    )
    for line in privacy_lines(s.get("privacy")):
        console.print(line.removeprefix("- ").replace("**", ""), highlight=False)
    adapter = result.run_dir / "adapter"
    exported = f"adapter: {adapter}" if adapter.is_dir() else "no adapter: none was trained"
    console.print(f"results: {result.run_dir}  ({exported})")


@app.command("config")
def show_config(
    config: ConfigFile = None,
    set_: Overrides = None,
    reference: Annotated[
        bool, typer.Option(help="every key with its default, accepted values and meaning")
    ] = False,
) -> None:
    """Print the configuration `fedpeft run` would use with these options.

    Every default filled in, checked as a run checks it; nothing is loaded or written."""
    _setup_logging(False)
    with user_errors():
        if reference:
            from fedpeft.config.reference import reference_markdown

            typer.echo(reference_markdown(), nl=False)
            return
        import tomli_w

        from fedpeft.server.config_checks import check_names

        cfg = _resolve_config(config, set_ or [], None)
        spec = check_names(cfg)
    raw = cfg.model_dump(mode="json", exclude_none=True)  # TOML has no None: unset keys go
    raw["peft"] = {"method": cfg.peft.method, **spec.model_dump(mode="json", exclude_none=True)}
    typer.echo(tomli_w.dumps(raw), nl=False)


@app.command()
def allocate(
    config: ConfigFile = None,
    set_: Overrides = None,
    explain: Annotated[bool, typer.Option(help="list every candidate per client")] = False,
    out: Annotated[Path | None, typer.Option(help="also write the decisions as JSON")] = None,
) -> None:
    """Show which PEFT configuration each client gets (policy, U = α·R − β·C + γ·E) and why."""
    _setup_logging(False)
    with user_errors():
        from fedpeft.allocation import explain as explain_one
        from fedpeft.allocation import format_allocations
        from fedpeft.cli.allocate import allocation_report, write_record

        cfg = _resolve_config(config, set_ or [], None)
        allocations, record = allocation_report(cfg)
    console = Console()
    console.print(format_allocations(allocations), highlight=False, soft_wrap=True)
    unassigned = [a for a in allocations if a.chosen is None]
    for a in unassigned[:5]:  # why, on the console, not only in --explain or the record
        console.print(f"client {a.client_id} ({a.tier}) gets nothing: {a.reason}", markup=False)
    if len(unassigned) > 5:
        console.print(f"… and {len(unassigned) - 5} more clients get nothing", highlight=False)
    if explain:
        for a in allocations:
            console.print("\n" + explain_one(a), highlight=False, soft_wrap=True)
    if out is not None:
        write_record(record, out)
        console.print(f"wrote {out}")


@app.command()
def report(
    run_dir: Annotated[
        Path, typer.Argument(help="a run folder, runs/<run-id>, or an experiment folder")
    ],
    reference: Annotated[
        Path | None,
        typer.Option(help="a finished run to compare with, e.g. the same data with 1 client"),
    ] = None,
    classes: Annotated[
        bool, typer.Option(help="evaluate per class when classes.json is missing (loads the model)")
    ] = True,
) -> None:
    """(Re)write the report of a run or of an experiment from its logs.

    A run's report.md and plots/*.png, or an experiment's report.md, report.html and
    plots/ from its runs."""
    _setup_logging(False)
    with user_errors():
        from fedpeft.config.paths import check_report_folder

        check_report_folder(run_dir)  # before anything is read or written
        if (run_dir / "experiment.json").is_file():
            from fedpeft.cli.experiment import report_experiment

            Console().print(f"wrote {report_experiment(run_dir)}")
            return
        if reference is not None and not (reference / "summary.json").is_file():
            what = "has no summary.json" if reference.is_dir() else "is not a folder"
            raise FedpeftError(f"{reference} {what}; pass a finished fedpeft run as --reference.")
        from fedpeft.report import write_report
        from fedpeft.server.classes import CLASSES, evaluate_run

        if classes and not (run_dir / CLASSES).is_file():
            evaluate_run(run_dir)
        Console().print(f"wrote {write_report(run_dir, reference)}")


@app.command()
def audit(
    run_dir: Annotated[Path, typer.Argument(help="a finished run folder, runs/<run-id>")],
    max_examples: Annotated[
        int, typer.Option(help="members (and as many non-members) per target")
    ] = 500,
    clients: Annotated[int, typer.Option(help="single clients' updates to audit")] = 2,
    shadow: Annotated[
        int, typer.Option(help="LiRA: shadow federations to train (0: no LiRA; else ≥ 2)")
    ] = 0,
    seed: Annotated[int, typer.Option(help="seed of the audit's samples")] = 0,
) -> None:
    """Membership-inference audit of a run's global adapter and clients' updates.

    AUC and TPR at 1%/0.1% FPR of each attack; writes audit.json and audit_roc.png."""
    _setup_logging(False)
    with user_errors():
        from fedpeft.cli.audit import AUDIT_JSON, AUDIT_PNG, AuditOptions, audit_run

        record = audit_run(run_dir, AuditOptions(max_examples, clients, shadow, seed=seed))
    console = Console()
    for target, attacks in record["targets"].items():
        for attack, r in attacks.items():
            console.print(
                f"{target:>10} · {attack:<18} AUC {r['auc']:.3f} · TPR@1%FPR "
                f"{r['tpr_at_0.01_fpr']:.3f} · TPR@0.1%FPR {r['tpr_at_0.001_fpr']:.3f} "
                f"({r['members']} members, {r['nonmembers']} non-members)",
                highlight=False,
            )
    console.print(f"wrote {run_dir / AUDIT_JSON} and {run_dir / AUDIT_PNG}")


@app.command()
def predict(
    run_dir: Annotated[Path, typer.Argument(help="a finished run folder, runs/<run-id>")],
    text: Annotated[
        list[str] | None, typer.Option("--text", help="a text to classify (repeat for several)")
    ] = None,
    image: Annotated[
        list[str] | None,
        typer.Option("--image", help="an image file to classify (repeat for several)"),
    ] = None,
    file: Annotated[
        Path | None,
        typer.Option(
            "--file",
            help="a CSV, TSV, JSONL, JSON or Parquet file of texts or image paths, or a "
            "folder of images (class subfolders: labels)",
        ),
    ] = None,
    text_column: Annotated[
        str | None, typer.Option(help="--file: its text column (default: the run's)")
    ] = None,
    image_column: Annotated[
        str | None, typer.Option(help="--file: its column of image paths (default: the run's)")
    ] = None,
    label_column: Annotated[
        str | None,
        typer.Option(
            help="--file: its column of labels, scored (default: the run's; '': no scoring)"
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="--file: write every row's prediction to this CSV")
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(min=1, help="texts or images per batch (default: the run's evaluation's)"),
    ] = None,
    top_k: Annotated[
        int, typer.Option(min=1, help="the k most likely classes, each with its probability")
    ] = 1,
    device: Annotated[
        str,
        typer.Option(help="auto | cpu | cuda: where to predict (not where the run trained)"),
    ] = "auto",
) -> None:
    """Classify new texts or images with a finished run's final global model.

    Text and image classifiers, instruction-tuned decoders; a file with the run's label
    column, or a folder of class subfolders, is also scored."""
    _setup_logging(False)
    console = Console()
    with user_errors():
        from fedpeft.cli import predict as p
        from fedpeft.server.trained import open_finished

        if sum(x is not None for x in (text, image, file)) != 1:
            raise FedpeftError(
                "give texts with --text, images with --image, or a file or folder with --file "
                "(one of them)."
            )
        if file is None and (out, text_column, image_column, label_column) != (None,) * 4:
            raise FedpeftError(
                "--out, --text-column, --image-column and --label-column go with --file."
            )
        if file is not None and out is not None:
            p.check_out(out, file)
        p.check_device(device)
        run = open_finished(run_dir)
        # the machine that predicts decides (run.device is not fingerprinted: same results)
        on = run.cfg.model_copy(update={"run": run.cfg.run.model_copy(update={"device": device})})
        run = replace(run, cfg=on)
        p.check_supported(run)
        inputs = p.gather(run, text, image, file, text_column, image_column, label_column)
        preds = p.predict(run, inputs, batch_size, top_k, err_console)
        if out is not None:
            p.write_csv(out, inputs, preds)
    if file is None:
        for line in p.item_lines(inputs, preds):
            typer.echo(line)
        return
    if out is not None:
        console.print(f"wrote {len(inputs.items)} predictions to {out}", highlight=False)
    else:
        console.print(p.table(inputs, preds))
        n = len(inputs.items)
        more = f"the first {p.SHOWN} of {n} rows" if n > p.SHOWN else f"all {n} row{'s' * (n != 1)}"
        console.print(f"{more}; --out FILE writes every row as CSV", highlight=False)
    if (scores := p.metrics_line(inputs, preds)) is not None:
        console.print(scores, highlight=False)


@app.command()
def experiment(
    file: Annotated[Path, typer.Argument(help="an experiment file (TOML): grid × seeds")],
    out: Annotated[
        Path | None, typer.Option(help="the experiment folder (default <output_dir>/<name>)")
    ] = None,
    dry_run: Annotated[bool, typer.Option(help="list the runs to do; run nothing")] = False,
    report: Annotated[bool, typer.Option(help="write the report at the end")] = True,
    only: Annotated[
        list[str] | None,
        typer.Option(
            help="run only these runs now: AXIS=VALUE[,VALUE…] (an axis, `variant` or "
            "`seed`; repeat for several); the tables and report still cover the whole grid"
        ),
    ] = None,
) -> None:
    """Run a grid of runs × seeds in parallel within a core/memory budget (resumable).

    Tabulates every round of every run (results.csv) and writes the report."""
    _setup_logging(False)
    with user_errors():
        from fedpeft.cli.experiment import run_experiment_command

        code = run_experiment_command(file, out, dry_run, report, Console(), only)
    if code:
        raise typer.Exit(code)


def _interruptible() -> None:
    """Ctrl-C back for a run the experiment runner started (``FEDPEFT_SIGINT=1``): a grid
    started in the background (`cmd &`) hands SIGINT ignored to its children, and the
    runner stops its runs with SIGINT, each at its round boundary. (Set here rather than
    between fork and exec in the runner, which has threads: a ``preexec_fn`` is not safe.)"""
    import os
    import signal

    if os.environ.get("FEDPEFT_SIGINT") == "1":
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _runner(runtime: Runtime) -> Callable[..., RunResult]:
    if runtime is Runtime.flower_sim:
        from fedpeft.runtime.flower.sim import run_flower_sim

        return run_flower_sim
    from fedpeft.runtime.local import run_local

    return run_local


def _resolve_config(config: Path | None, sets: list[str], resume: Path | None) -> ExperimentConfig:
    from fedpeft.config import build_config, load_config, read_toml
    from fedpeft.config.loading import apply_override
    from fedpeft.config.paths import (
        INPUT_KEYS,
        absolute_inputs,
        check_resumed_inputs,
        relative_inputs,
    )
    from fedpeft.server.store import CONFIG, RunStore

    if resume is None:  # input paths stored absolute: a resume elsewhere reads the same files
        return absolute_inputs(load_config(config, sets))
    if config is not None:
        raise FedpeftError("--resume uses the run folder's own config.toml; drop --config.")
    keys = [s.partition("=")[0].strip() for s in sets]
    if any(key not in ("run.rounds", *INPUT_KEYS) for key in keys):
        raise FedpeftError(
            "with --resume only `--set run.rounds=N`, or the new place of a moved input file "
            f"(`--set {INPUT_KEYS[0]}=…`; also {', '.join(INPUT_KEYS[1:])}), may change the "
            "run's config."
        )
    store = RunStore.open_existing(resume)
    raw = read_toml(store.root / CONFIG)
    for s, key in zip(sets, keys, strict=True):
        section, _, name = key.partition(".")
        if key in INPUT_KEYS and raw.get(section, {}).get(name) is None:
            raise FedpeftError(
                f"--set {s}: the run started without `{key}`; beside --resume an input file "
                "may only be given its new place, since another input is another run."
            )
        apply_override(raw, s)
    cfg = build_config(raw, source=f"config {store.root / CONFIG}", overrides=sets)
    for given in relative_inputs(cfg):
        logging.getLogger(__name__).warning(
            "%s in %s is a relative path: it is read from this folder, %s, which may not be "
            "where the run started; resume from that folder if the file is not the same.",
            given,
            store.root / CONFIG,
            Path.cwd(),
        )
    # a new place given now is stored absolute; an old run's relative path stays as it is,
    # since its checkpoint's fingerprint (before 2026-12-07) was written with it
    cfg = absolute_inputs(cfg, only=keys)
    check_resumed_inputs(cfg, store.root / CONFIG)
    return cfg


def _method_label(peft: PeftConfig) -> str:
    options = " ".join(f"{k}={v}" for k, v in peft.options.items())
    return f"{peft.method} {options}".strip()


def _first_round(resume: Path | None, rounds: int) -> int:
    if resume is None:
        return 1
    from fedpeft.server.store import RunStore, check_rounds_left

    try:  # the newest round that verifies, as run_local finds it (not a stray manifest's)
        newest = RunStore.open_existing(resume).load_checkpoint().round
    except FedpeftError:
        return 1  # run_local refuses the folder in its own words
    check_rounds_left(newest, rounds)
    return newest + 1


def main() -> None:
    try:
        app()
    except BrokenPipeError:  # e.g. `fedpeft run | head`
        sys.exit(1)


if __name__ == "__main__":
    main()
