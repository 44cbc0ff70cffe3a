"""``prefect-acestep latents ...``: browse and manage the latent store without running a flow."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from prefect_acestep.flows.cli.output import document, emit, table, typed_errors
from prefect_acestep.stages.records import LatentRecord
from prefect_acestep.tasks.blocks import AceLatentStore

if TYPE_CHECKING:
    from prefect_acestep.stages.store import LatentStore

app = typer.Typer(help="Browse and manage stored latents.", no_args_is_help=True)

StoreOption = Annotated[
    str | None, typer.Option("--store", help="Saved ACE Latent Store block; default: ACE_LATENT_DIR.")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def named_store(store: str | None) -> LatentStore:
    """The store of the saved block ``store``, or the environment's default store."""
    return AceLatentStore.resolve(store).get_store()


def _record_rows(records: list[LatentRecord]) -> None:
    table(
        "Latents",
        ["id", "stage", "kind", "shape", "variant", "pinned", "created", "expires", "parents"],
        [
            [
                r.id,
                r.stage_type,
                f"checkpoint@{r.checkpoint_step}" if r.is_checkpoint else "final",
                "x".join(map(str, r.shape)),
                r.backend.variant,
                "yes" if r.pinned else "",
                r.created_at.isoformat(timespec="seconds") if r.created_at else None,
                "never" if r.pinned else (r.expires_at.isoformat(timespec="seconds") if r.expires_at else None),
                ", ".join(r.parent_ids),
            ]
            for r in records
        ],
    )


@app.command("ls")
def list_latents(
    store: StoreOption = None,
    stage: Annotated[str | None, typer.Option(help="Only this stage type.")] = None,
    pipeline: Annotated[str | None, typer.Option(help="Only latents of this pipeline (flow run) id.")] = None,
    pinned: Annotated[bool | None, typer.Option("--pinned/--unpinned", help="Only pinned / unpinned.")] = None,
    checkpoints: Annotated[
        bool | None, typer.Option("--checkpoints/--finals", help="Only checkpoints / finals.")
    ] = None,
    parent: Annotated[str | None, typer.Option(help="Only latents made from this latent.")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="At most this many, newest first.")] = None,
    as_json: JsonOption = False,
) -> None:
    """List live latents, newest first."""
    with typed_errors():
        records = named_store(store).list(
            stage_type=stage, pipeline_id=pipeline, pinned=pinned, is_checkpoint=checkpoints, parent=parent, limit=limit
        )
        emit(records, as_json, _record_rows)


@app.command("show")
def show(latent_id: str, store: StoreOption = None) -> None:
    """Print one latent's full record (provenance, params, lifecycle) as JSON."""
    with typed_errors():
        document(named_store(store).record(latent_id))


@app.command("pin")
def pin(latent_id: str, store: StoreOption = None, as_json: JsonOption = False) -> None:
    """Pin a latent: it and its ancestors survive TTL and budget collection."""
    with typed_errors():
        named_store(store).pin(latent_id)
        emit({"pinned": latent_id}, as_json, lambda _: typer.echo(f"pinned {latent_id}"))


@app.command("unpin")
def unpin(latent_id: str, store: StoreOption = None, as_json: JsonOption = False) -> None:
    """Unpin a latent: it expires with its TTL again."""
    with typed_errors():
        named_store(store).unpin(latent_id)
        emit({"unpinned": latent_id}, as_json, lambda _: typer.echo(f"unpinned {latent_id}"))


@app.command("rm")
def remove(latent_ids: list[str], store: StoreOption = None, as_json: JsonOption = False) -> None:
    """Delete latents now (a tombstone keeps the reason for later lookups)."""
    with typed_errors():
        latents = named_store(store)
        for latent_id in latent_ids:
            latents.delete(latent_id)
        emit({"deleted": latent_ids}, as_json, lambda _: typer.echo(f"deleted {' '.join(latent_ids)}"))


@app.command("gc")
def collect(store: StoreOption = None, as_json: JsonOption = False) -> None:
    """Collect expired latents (and evict to the byte budget)."""
    with typed_errors():
        report = named_store(store).gc()
        emit(
            report,
            as_json,
            lambda r: typer.echo(f"removed {len(r.removed)} latents, freed {r.bytes_freed} bytes"),
        )


@app.command("lineage")
def lineage(latent_id: str, store: StoreOption = None, as_json: JsonOption = False) -> None:
    """Ancestors (what it was made from) and descendants (what was made from it)."""
    with typed_errors():
        found = named_store(store).lineage(latent_id)

        def human(result) -> None:
            typer.echo("ancestors:   " + (" <- ".join(r.id for r in result.ancestors) or "-"))
            if result.missing_ancestors:
                typer.echo("missing:     " + ", ".join(result.missing_ancestors))
            typer.echo("descendants: " + (", ".join(r.id for r in result.descendants) or "-"))

        emit(found, as_json, human)


@app.command("export")
def export(
    latent_ids: list[str],
    output: Annotated[Path, typer.Option("-o", "--output", help="Bundle file to write.")],
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """Write latents (tensors and records) to one bundle file."""
    with typed_errors():
        path = named_store(store).export_bundle(latent_ids, output)
        emit({"bundle": str(path), "ids": latent_ids}, as_json, lambda _: typer.echo(f"wrote {path}"))


@app.command("import")
def import_bundle(bundle: Path, store: StoreOption = None, as_json: JsonOption = False) -> None:
    """Add a bundle's latents to the store (verified first; nothing is written if it fails)."""
    with typed_errors():
        ids = named_store(store).import_bundle(bundle)
        emit({"imported": ids}, as_json, lambda _: typer.echo(f"imported {len(ids)}: {' '.join(ids)}"))
