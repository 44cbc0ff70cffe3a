"""The demo: a four-stage pipeline on the embedded backend, written as audio, then an exact resume
from a checkpoint, so a new user sees every core idea (IDs, chaining, audio, resume) in one run."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field

from prefect_acestep.flows.cli.output import RESULT_COLUMNS, result_rows, table
from prefect_acestep.stages.conversions import restore
from prefect_acestep.stages.requests import PipelineRequest
from prefect_acestep.stages.results import StageResult
from prefect_acestep.tasks.blocks import AceLatentStore

DEMO_REQUEST = PipelineRequest.model_validate(
    {
        "caption": "warm electric piano ballad with soft drums and a round bass",
        "keyscale": "D minor",
        "bpm": 96,
        "timesignature": "4",
        "duration": 12.0,
        "instrumental": True,
        "stages": [
            {"stage_type": "generate", "seed": 42, "checkpoint_steps": [4], "preview": True},
            {"stage_type": "refine", "src_stage": 0, "denoise": 0.5, "seed": 43, "preview": True},
            {"stage_type": "repaint", "src_stage": 1, "repainting_start": 4.0, "repainting_end": 8.0, "seed": 44,
             "preview": True},
            {"stage_type": "cover", "src_stage": 2, "caption": "driving synth-pop with punchy drums and bright leads",
             "audio_cover_strength": 0.6, "seed": 45},
        ],
    }
)  # fmt: skip


class DemoReport(BaseModel):
    stages: list[list[StageResult]] = Field(description="Results of the pipeline, per stage and sample.")
    resumed: list[StageResult] = Field(description="The generate stage resumed from its step-4 checkpoint.")
    resume_exact: bool = Field(description="The resumed latent is bit-identical to the uninterrupted one.")

    def print(self) -> None:
        resumed = self.resumed[0]
        rows = result_rows(self.stages) + [
            ["resume", f"generate from step {resumed.start_step}", resumed.latent_id, resumed.sample_index,
             resumed.seed, None, resumed.audio_path]
        ]  # fmt: skip
        audio_dir = Path(self.stages[-1][0].audio_path or ".").parent
        rows = [[*row[:-1], None if row[-1] is None else Path(row[-1]).name] for row in rows]
        table(f"prefect-acestep demo (embedded backend); audio in {audio_dir}", RESULT_COLUMNS, rows)
        verdict = "bit-identical to" if self.resume_exact else "DIFFERENT from"
        print(f"Resumed latent {resumed.latent_id} is {verdict} the uninterrupted {self.stages[0][0].latent_id}.")


def run_demo(out_dir: str, store: str | None) -> DemoReport:
    from prefect_acestep.flows.generate import generate_flow
    from prefect_acestep.flows.pipeline import pipeline_flow

    hops = pipeline_flow(DEMO_REQUEST, store=store, out_dir=out_dir)
    latents = AceLatentStore.resolve(store).get_store()
    generated = hops[0][0]
    checkpoint = latents.record(generated.checkpoints[0].latent_id)
    resumed = generate_flow(restore(checkpoint), store=store, out_dir=out_dir)
    exact = latents.record(resumed[0].latent_id).digest == latents.record(generated.latent_id).digest
    return DemoReport(stages=hops, resumed=resumed, resume_exact=exact)
