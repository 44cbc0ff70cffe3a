"""What a person sees in the Prefect UI, checked in a real headless Chromium (Debian's chromium and
chromium-driver, driven by selenium; no browser is downloaded), against a real server, the
deployments of prefect.yaml and a process worker:

- the pipeline deployment's run form shows our parameters with their titles and descriptions, and a
  stage's form opens with what a person decides first, with named choices (Inherit/Set/Unset);
- a finished pipeline run's artifacts (stage tables, lineage summary) show its latent IDs, and its
  summary plays every decoded stage (players that load and play) and shows their spectrograms;
- a checkpoint's "resume" link opens the custom deployment's form filled in, and submitting it runs
  (on the worker) to a latent bit-identical to the uninterrupted one;
- a pipeline with mistakes is refused before any stage runs, with one line per problem naming the
  stage index and the field's title.

Screenshots go to test-output/ui/ for a person to look at (CI keeps test-output/).
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from prefect_stack import REPO, SHORT_SONG, Api, Processes, run_cli, stack_env, start_server, table_rows, wait_for
from prefect_acestep.stages.requests import PipelineRequest, PipelineStage

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
SHOTS = REPO / "test-output" / "ui"
POOL = "acestep-process"
PIPELINE = {
    **SHORT_SONG,
    "stages": [
        {"stage_type": "generate", "seed": 5, "checkpoint_steps": [4], "inference_steps": 8, "preview": True},
        {"stage_type": "refine", "denoise": 0.5, "seed": 6},  # no source: it refines stage 0
        {"stage_type": "repaint", "src_stage": 1, "repainting_start": 0.5, "repainting_end": 1.5, "seed": 7},
    ],
}
MISTAKES = {
    **SHORT_SONG,
    "stages": [
        {"stage_type": "generate", "seed": 1},
        {"stage_type": "refine", "src_stage": 3, "denoise": 0.5},
        {"stage_type": "repaint", "src_stage": 1, "repainting_start": 1.0, "repainting_end": 6.0},
    ],
}
"""Stage 1 reads a stage that does not come before it; stage 2's window ends past the 2 s clip."""

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def ui_stack(tmp_path_factory) -> Iterator[tuple[str, Path, Processes, list]]:
    """A Prefect server with its UI, every deployment of prefect.yaml on a process pool with a worker,
    and one finished pipeline run (run from the command line)."""
    for binary in (CHROMIUM, CHROMEDRIVER):
        assert Path(binary).exists(), f"{binary} missing: apt-get install -y chromium chromium-driver (.ci/run does)"
    root = tmp_path_factory.mktemp("ui")
    processes = Processes(root)
    try:
        api = start_server(processes, root / "server-home", ui=True)
        base = api.removesuffix("/api")
        env = stack_env(root / "client-home", api, ACE_LATENT_DIR=str(root / "latents"),
                        ACE_AUDIO_DIR=str(root / "audio"), PREFECT_WORKER_QUERY_SECONDS="1",
                        PREFECT_RUNNER_POLL_FREQUENCY="1")  # fmt: skip
        run_cli([sys.executable, "-m", "prefect", "work-pool", "create", POOL, "--type", "process"], env)
        run_cli([sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all",
                 "--prefect-file", str(REPO / "deployments" / "prefect.yaml")], env)  # fmt: skip
        processes.start("worker", [sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL], env)
        request = root / "pipeline.json"
        request.write_text(json.dumps(PIPELINE))
        output = run_cli([str(Path(sys.executable).parent / "prefect-acestep"), "run", str(request), "--json"], env)
        yield base, root, processes, json.loads(output)
    finally:
        processes.kill_all()


@pytest.fixture(scope="module")
def browser(ui_stack) -> Iterator:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1400,1400", "--no-first-run", "--disable-extensions",
                     "--autoplay-policy=no-user-gesture-required"):  # fmt: skip
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    SHOTS.mkdir(parents=True, exist_ok=True)
    try:
        yield driver
    finally:
        driver.quit()


def _store(root: Path):
    from prefect_acestep.stages.store import LatentStore

    return LatentStore(root / "latents", ttl_hours=24)


def _normalized(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _page_text(driver) -> str:
    from selenium.webdriver.common.by import By

    return _normalized(driver.find_element(By.TAG_NAME, "body").text)


def _wait_text(driver, needle: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = _page_text(driver)
        if needle in text:
            return text
        time.sleep(0.5)
    driver.save_screenshot(str(SHOTS / "timeout.png"))
    raise AssertionError(f"{needle!r} never appeared on {driver.current_url}; page text:\n{_page_text(driver)[:3000]}")


def _shoot(driver, name: str, at_text: str | None = None) -> None:
    """A screenshot, scrolled so that the element starting with ``at_text`` is in view."""
    from selenium.webdriver.common.by import By

    if at_text is not None:
        element = driver.find_element(By.XPATH, f"//*[starts-with(normalize-space(text()), {json.dumps(at_text)})]")
        driver.execute_script("arguments[0].scrollIntoView({block: 'start'})", element)
        time.sleep(0.5)
    driver.save_screenshot(str(SHOTS / f"{name}.png"))


def test_run_form_shows_our_parameters_with_descriptions(ui_stack, browser):
    base, _, _, _ = ui_stack
    deployment = Api(f"{base}/api").deployment("acestep-pipeline", "demo")
    browser.get(f"{base}/deployments/deployment/{deployment['id']}/run")
    text = _wait_text(browser, "Parameters")
    _wait_text(browser, "Preview")
    expected = [(name, info) for name, info in PipelineRequest.model_fields.items()]
    expected += [(name, info) for name, info in PipelineStage.model_fields.items()]
    missing = [
        name
        for name, info in expected
        if info.title not in text or _normalized(info.description) not in text
    ]
    assert missing == [], f"fields without their title or description on the run form: {missing}"
    assert "Name of a saved ACE Latent Store block" in text  # the flow's own arguments, from its docstring
    assert "Directory for the audio files" in text
    values = browser.execute_script("return [...document.querySelectorAll('textarea, input')].map(e => e.value)")
    assert "warm electric piano ballad with soft drums and a round bass" in values  # prefect.yaml's default
    _shoot(browser, "run-form-top")
    _shoot(browser, "run-form-stages", at_text="Stages")
    _shoot(browser, "run-form-end", at_text="out_dir")


def test_artifacts_show_the_latent_ids(ui_stack, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    from prefect_acestep.stages.store import LatentStore

    base, root, _, hops = ui_stack
    latent_ids = [hop[0]["latent_id"] for hop in hops]
    checkpoint_id = hops[0][0]["checkpoints"][0]["latent_id"]
    flow_run_id = LatentStore(root / "latents", ttl_hours=24).record(latent_ids[0]).flow_run_id

    browser.get(f"{base}/runs/flow-run/{flow_run_id}")
    WebDriverWait(browser, 60).until(expected_conditions.element_to_be_clickable((By.ID, "artifacts"))).click()
    text = _wait_text(browser, "acestep-pipeline-summary")
    for stage in ("generate", "refine", "repaint"):
        assert f"{stage} stage: latents, seeds, steps" in text
    _shoot(browser, "run-artifacts")

    artifacts = Api(f"{base}/api").artifacts(flow_run_id)
    summary = next(a for a in artifacts if a["key"] == "acestep-pipeline-summary")
    browser.get(f"{base}/artifacts/artifact/{summary['id']}")
    text = _wait_text(browser, "Lineage:")
    assert f"Lineage: {' → '.join(latent_ids)}" in text
    _shoot(browser, "artifact-lineage")

    tables = [a for a in artifacts if a["type"] == "table"]
    assert len(tables) == 3
    seen: list[str] = []
    for table in tables:
        browser.get(f"{base}/artifacts/artifact/{table['id']}")
        text = _wait_text(browser, "latent_id")
        seen += [latent_id for latent_id in latent_ids if latent_id in text]
        stage = next(stage for stage in ("generate", "refine", "repaint") if f"{stage} stage" in text)
        if stage == "generate":
            assert checkpoint_id in text
        _shoot(browser, f"artifact-table-{stage}")
    assert sorted(seen) == sorted(latent_ids)


def _submit(browser, api: Api, deployment_id: str, processes: Processes) -> dict:
    """Press the run form's Submit once the form is ready; the flow run it created. The UI leaves
    the form for the deployment's page when the API took the run."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    locator = (By.XPATH, "//button[normalize-space(.)='Submit']")
    submit = WebDriverWait(browser, 60).until(expected_conditions.element_to_be_clickable(locator))
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", submit)
    submit.click()
    try:
        WebDriverWait(browser, 60).until(lambda driver: "/run" not in driver.current_url)
    except Exception:
        browser.save_screenshot(str(SHOTS / "submit-refused.png"))
        raise AssertionError(f"the form did not submit; page text:\n{_page_text(browser)[-3000:]}") from None

    def created() -> dict | None:
        runs = api.post("/flow_runs/filter", {"flow_runs": {"deployment_id": {"any_": [deployment_id]}}})
        return runs[0] if runs else None

    return wait_for("the flow run the form created", created, timeout=30, processes=processes)


def _flow_run_of(root: Path, hops: list) -> str:
    return _store(root).record(hops[0][0]["latent_id"]).flow_run_id


def test_a_stage_form_opens_with_what_a_person_decides_first(ui_stack, browser):
    """In the pipeline form a stage starts with its type, its source, how far it departs from it,
    the seed and the preview switch; empty-able fields offer named choices, not type names."""
    from selenium.webdriver.common.by import By

    base, _, _, _ = ui_stack
    deployment = Api(f"{base}/api").deployment("acestep-pipeline", "demo")
    browser.get(f"{base}/deployments/deployment/{deployment['id']}/run")
    _wait_text(browser, "Preview")
    text = _page_text(browser)
    stages = text.index("The stages, run in order and numbered from 0")
    first = ["Stage type", "Source stage", "Source latent", "Denoise (t_start)", "Cover strength", "Seed", "Preview"]
    positions = [text.index(f"{title} (Optional)", stages) for title in [*first, "Caption"]]
    assert positions == sorted(positions), dict(zip([*first, "Caption"], positions))
    choices = {button.text.strip() for button in browser.find_elements(By.CSS_SELECTOR, "button") if button.text.strip()}
    assert {"Inherit", "Set", "Unset"} <= choices
    assert not {"int", "str", "float", "None", "bool"} & choices, choices
    _shoot(browser, "run-form-stage-first-fields", at_text="Stages")


def test_a_pipeline_run_page_plays_and_shows_every_decoded_stage(ui_stack, browser):
    """From the run's page to its summary: one player per decoded stage that loads and plays its
    preview, and a spectrogram picture under each."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    base, root, _, hops = ui_stack
    browser.get(f"{base}/runs/flow-run/{_flow_run_of(root, hops)}")
    WebDriverWait(browser, 60).until(expected_conditions.element_to_be_clickable((By.ID, "artifacts"))).click()
    _wait_text(browser, "acestep-pipeline-summary")
    card = browser.find_element(By.XPATH, "//*[normalize-space(text())='acestep-pipeline-summary']")
    browser.execute_script("arguments[0].click()", card)
    _wait_text(browser, "Lineage:")

    def players() -> list | None:
        found = browser.execute_script(
            "return [...document.querySelectorAll('audio')].map(a => [a.readyState, a.duration, a.error && a.error.code])"
        )
        return found if len(found) == 2 and all(state >= 1 for state, _, _ in found) else None

    found = wait_for("both players to load", players, timeout=30, processes=ui_stack[2])
    assert all(error is None and abs(duration - SHORT_SONG["duration"]) < 0.05 for _, duration, error in found)
    played = browser.execute_async_script(
        "const done = arguments[arguments.length - 1]; const audio = document.querySelector('audio');"
        "audio.muted = true; audio.play().then(() => setTimeout(() => done(audio.currentTime), 800), e => done(-1));"
    )
    assert played > 0.1, f"the preview did not play (currentTime {played})"
    pictures = browser.execute_script(
        "return [...document.querySelectorAll('img[alt^=\"Spectrogram\"]')].map(i => [i.complete, i.naturalWidth])"
    )
    assert pictures == [[True, 640], [True, 640]]
    latent_ids = [hop[0]["latent_id"] for hop in hops]
    text = _page_text(browser)
    assert f"Stage 0 · generate · {latent_ids[0]}" in text and f"Stage 2 · repaint · {latent_ids[2]}" in text
    browser.execute_script("document.querySelector('audio').scrollIntoView({block: 'start'}); window.scrollBy(0, -60)")
    _shoot(browser, "run-summary-players")


def test_resume_link_opens_a_filled_form_that_runs_to_a_bit_identical_latent(ui_stack, browser):
    """Stage 0's page has a "resume" link for its step-4 checkpoint. It opens the custom
    deployment's run form with the checkpoint's restored request; submitted, the worker resumes it
    and the final latent is bit-identical to stage 0's (same content digest)."""
    from selenium.webdriver.common.by import By

    base, root, processes, hops = ui_stack
    api = Api(f"{base}/api")
    checkpoint = hops[0][0]["checkpoints"][0]["latent_id"]
    listen = next(a for a in api.artifacts(_flow_run_of(root, hops)) if a["key"] == "acestep-stage-0")
    browser.get(f"{base}/artifacts/artifact/{listen['id']}")
    _wait_text(browser, f"Checkpoint at step 4 {checkpoint}")
    link = browser.find_element(By.XPATH, f"//a[normalize-space(text())='resume' and contains(@href, '{checkpoint}')]")
    pages = browser.window_handles
    link.click()  # the UI opens artifact links in a new tab
    wait_for("the run form's tab", lambda: len(browser.window_handles) > len(pages), timeout=20, processes=processes)
    browser.switch_to.window(browser.window_handles[-1])
    custom = api.deployment("acestep-generate", "custom")
    assert browser.current_url.startswith(f"{base}/deployments/deployment/{custom['id']}/run?parameters=")
    _wait_text(browser, "Init latent")
    values = browser.execute_script("return [...document.querySelectorAll('textarea, input')].map(e => e.value)")
    assert checkpoint in values and SHORT_SONG["caption"] in values
    _shoot(browser, "resume-form")
    run = _submit(browser, api, custom["id"], processes)
    api.wait_completed(run["id"], processes, timeout=180)
    [row] = [row for a in api.artifacts(run["id"]) if a["type"] == "table" for row in table_rows(a)]
    store = _store(root)
    resumed, original = store.record(row["latent_id"]), store.record(hops[0][0]["latent_id"])
    assert resumed.parent_ids == [checkpoint] and resumed.id != original.id
    assert resumed.digest == original.digest
    browser.close()
    browser.switch_to.window(pages[0])


def test_a_mistake_is_reported_before_the_run_with_the_stage_index(ui_stack, browser):
    """A pipeline with two broken stages, submitted from the demo form, fails before any stage runs:
    the run's state, its log and an artifact name each problem by stage index and field title."""
    base, _, processes, _ = ui_stack
    api = Api(f"{base}/api")
    demo = api.deployment("acestep-pipeline", "demo")
    parameters = quote(json.dumps({"request": MISTAKES}, separators=(",", ":")), safe="")
    browser.get(f"{base}/deployments/deployment/{demo['id']}/run?parameters={parameters}")
    _wait_text(browser, "Parameters")
    run = _submit(browser, api, demo["id"], processes)

    def finished() -> dict | None:
        found = api.flow_run(run["id"])
        return found if found["state_type"] in {"FAILED", "CRASHED", "COMPLETED"} else None

    run = wait_for("the refused flow run to finish", finished, timeout=180, processes=processes)
    expected = [
        "stage 1 (refine) · Source stage (src_stage): 3 is not an earlier stage",
        "stage 2 (repaint) · Repaint end (s) (repainting_end): 6 s is past the end of the clip: its Duration (s) is 2 s",
    ]
    assert run["state_type"] == "FAILED", run["state"]
    assert all(line in run["state"]["message"] for line in expected), run["state"]["message"]
    assert run["name"] == "pipeline · invalid request"
    assert api.post("/task_runs/filter", {"flow_runs": {"id": {"any_": [run["id"]]}}}) == []  # nothing ran
    [problems] = [a for a in api.artifacts(run["id"]) if a["key"] == "acestep-request-problems"]
    assert all(line in problems["data"] for line in expected)

    browser.get(f"{base}/runs/flow-run/{run['id']}")
    text = _wait_text(browser, "The request was not run:")
    assert all(line in text for line in expected)
    _shoot(browser, "mistake-run-logs")
    browser.get(f"{base}/artifacts/artifact/{problems['id']}")
    _wait_text(browser, "nothing ran")
    _shoot(browser, "mistake-artifact")
