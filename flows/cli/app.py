"""``prefect-acestep``: run the flows and manage latents from a shell.

A command that prints tables or sentences for people takes ``--json`` to print the same as JSON for
scripts. A command whose output is a record or a request (``restore``, ``to-stage``,
``latents show``) prints it as a JSON document, which people and scripts read alike and
``generate --request`` reads back, so it takes no ``--json``. A typed error exits 2 with one line
naming the latent or field and the reason. Which Prefect server the commands use, and the settings
they run flows with, is ``prefect_acestep.flows.cli.server``'s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from prefect_acestep.flows.cli import latents, server
from prefect_acestep.flows.cli.demo import run_demo
from prefect_acestep.flows.cli.output import RESULT_COLUMNS, document, emit, result_rows, table, typed_errors
from prefect_acestep.flows.cli.requests import build_request
from prefect_acestep.flows.cli.server import flows_start, prefect_for_command
from prefect_acestep.stages.conversions import custom_to_params, custom_to_stage, restore
from prefect_acestep.stages.decode import DEFAULT_NORMALIZE_DBFS, decode_latent
from prefect_acestep.stages.params import StageParams
from prefect_acestep.stages.requests import GenerateRequest, PipelineRequest, SimpleRequest
from prefect_acestep.stages.results import StageResult

app = typer.Typer(
    name="prefect-acestep",
    help="ACE-Step 1.5 stages as Prefect flows over persisted latent IDs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(latents.app, name="latents")
app.add_typer(server.app, name="server")

@app.callback()
def prefect_server(ctx: typer.Context) -> None:
    """ACE-Step 1.5 stages as Prefect flows over persisted latent IDs.

    Commands use the Prefect server at PREFECT_API_URL, else a local one (`prefect-acestep server
    start`), else a temporary one per command."""
    ctx.with_resource(prefect_for_command())

StoreOption = latents.StoreOption
JsonOption = latents.JsonOption
OutOption = Annotated[
    Path | None, typer.Option("--out", help="Directory for audio files; default: ACE_AUDIO_DIR.")
]


def _results_table(hops: list[list[StageResult]]) -> None:
    table("Stages", RESULT_COLUMNS, result_rows(hops))


def _out(out: Path | None) -> str | None:
    """``--out`` as an absolute path: the command line runs the flows in this process, for the user
    who typed it, so the directory is theirs to choose (relative to where they are, as a shell
    path is), not a folder under the audio root as a deployment run's ``out_dir`` is."""
    return None if out is None else str(out.expanduser().resolve())


def _check_named_latents(params: list[StageParams], store: str | None) -> None:
    """The latents a request names by ID are in the store before its flow starts: a missing one is
    the command's one-line error (``typed_errors``), not a failed run whose log holds a traceback."""
    from prefect_acestep.flows.common import borrowed_sources
    from prefect_acestep.tasks.blocks import AceLatentStore

    latent_store = AceLatentStore.resolve(store).get_store()
    for latent_id in sorted(borrowed_sources(params)):
        latent_store.record(latent_id)


@app.command()
def demo(out: OutOption = Path("out/demo"), store: StoreOption = None, as_json: JsonOption = False) -> None:
    """Run the demo pipeline on the embedded backend, write audio files, resume from a checkpoint."""
    with typed_errors():
        flows_start()
        report = run_demo(out_dir=_out(out), store=store)
        emit(report, as_json, lambda r: r.print())


@app.command()
def run(
    request_file: Annotated[Path, typer.Argument(help="Pipeline request (PipelineRequest) as JSON or YAML.")],
    out: OutOption = None,
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """Run a pipeline request file."""
    from prefect_acestep.flows.pipeline import pipeline_flow

    with typed_errors():
        request = build_request(PipelineRequest, request_file, {})
        _check_named_latents([request.stage_params(index) for index in range(len(request.stages))], store)
        flows_start()
        hops = pipeline_flow(request, store=store, out_dir=_out(out))
        emit(hops, as_json, _results_table)


@app.command()
def generate(
    request_file: Annotated[
        Path | None, typer.Option("--request", help="GenerateRequest as JSON or YAML; flags override it.")
    ] = None,
    caption: Annotated[str | None, typer.Option(help="Caption.")] = None,
    duration: Annotated[float | None, typer.Option(help="Seconds.")] = None,
    seed: Annotated[int | None, typer.Option(help="Base seed (-1 draws one).")] = None,
    variant: Annotated[str | None, typer.Option(help="Model variant.")] = None,
    steps: Annotated[int | None, typer.Option(help="Inference steps.")] = None,
    init_latent_id: Annotated[str | None, typer.Option(help="Latent to resume from.")] = None,
    t_start: Annotated[float | None, typer.Option(help="Start noise level in (0, 1].")] = None,
    checkpoint_step: Annotated[list[int] | None, typer.Option(help="Store x_t at this step (repeatable).")] = None,
    out: OutOption = None,
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """Run one stage (custom mode), from a request file and/or flags."""
    from prefect_acestep.flows.generate import generate_flow

    with typed_errors():
        request = build_request(
            GenerateRequest,
            request_file,
            {
                "caption": caption, "duration": duration, "seed": seed, "variant": variant,
                "inference_steps": steps, "init_latent_id": init_latent_id, "t_start": t_start,
                "checkpoint_steps": checkpoint_step or None,
            },
        )  # fmt: skip
        _check_named_latents([custom_to_params(request)], store)
        flows_start()
        results = generate_flow(request, store=store, out_dir=_out(out))
        emit(results, as_json, lambda r: _results_table([r]))


@app.command()
def simple(
    description: Annotated[str, typer.Argument(help="What the music should be, in plain words.")],
    duration: Annotated[float | None, typer.Option(help="Seconds (default: planned).")] = None,
    seed: Annotated[int, typer.Option(help="Base seed (-1 draws one).")] = -1,
    instrumental: Annotated[bool, typer.Option(help="No vocals.")] = False,
    out: OutOption = None,
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """Describe the music; the planner fills the parameters, then one generate stage runs."""
    from prefect_acestep.flows.simple import simple_flow

    with typed_errors():
        request = SimpleRequest(description=description, duration=duration, seed=seed, instrumental=instrumental)
        flows_start()
        results = simple_flow(request, store=store, out_dir=_out(out))
        emit(results, as_json, lambda r: _results_table([r]))


@app.command()
def decode(
    latent_id: str,
    output: Annotated[Path, typer.Option("-o", "--output", help="Audio file (its suffix picks the format).")],
    sample: Annotated[list[int] | None, typer.Option(help="Sample index to decode (repeatable; default all).")] = None,
    normalize: Annotated[bool, typer.Option(help="Peak-normalise each sample to -1 dBFS, as upstream does.")] = True,
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """Decode a stored latent to audio. With several samples, files are named ``<stem>_<i><suffix>``."""
    with typed_errors():
        latents_store = latents.named_store(store)
        paths = decode_latent(
            latents_store, latent_id, output.parent, sample_indices=sample, suffix=output.suffix or ".wav",
            stem=output.stem, normalize_dbfs=DEFAULT_NORMALIZE_DBFS if normalize else None,
            exact_name=bool(output.suffix),
        )  # fmt: skip
        emit([str(p) for p in paths], as_json, lambda ps: typer.echo("\n".join(ps)))


SampleOption = Annotated[int, typer.Option(help="Sample index of the batch.")]


@app.command("restore")
def restore_command(latent_id: str, sample: SampleOption = 0, store: StoreOption = None) -> None:
    """Print the custom request (GenerateRequest) that resumes from this latent, as JSON: what
    ``generate --request`` reads."""
    with typed_errors():
        document(restore(latents.named_store(store).record(latent_id), sample_index=sample))


@app.command("to-stage")
def to_stage(latent_id: str, sample: SampleOption = 0, store: StoreOption = None) -> None:
    """Print the pipeline stage ("add to pipeline") that starts from this latent, as JSON: a stage
    of a pipeline request file."""
    with typed_errors():
        request = restore(latents.named_store(store).record(latent_id), sample_index=sample)
        document(custom_to_stage(request))
