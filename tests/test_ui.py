"""What a person sees in the Prefect UI, checked in a real headless Chromium (Debian's chromium and
chromium-driver, driven by selenium; no browser is downloaded): the pipeline deployment's run form
shows our parameters with their titles and descriptions, and a finished pipeline run's artifacts
(stage tables, lineage summary) show its latent IDs. Screenshots go to test-output/ui/ for a person
to look at (CI keeps test-output/).
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from prefect_stack import REPO, SHORT_SONG, Api, Processes, run_cli, stack_env, start_server
from prefect_acestep.stages.requests import PipelineRequest, PipelineStage

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
SHOTS = REPO / "test-output" / "ui"
PIPELINE = {
    **SHORT_SONG,
    "stages": [
        {"stage_type": "generate", "seed": 5, "checkpoint_steps": [4], "inference_steps": 8},
        {"stage_type": "refine", "src_stage": 0, "denoise": 0.5, "seed": 6},
        {"stage_type": "repaint", "src_stage": 1, "repainting_start": 0.5, "repainting_end": 1.5, "seed": 7},
    ],
}

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def ui_stack(tmp_path_factory) -> Iterator[tuple[str, Path, Processes]]:
    """A Prefect server with its UI, the pipeline deployment, and one finished pipeline run."""
    for binary in (CHROMIUM, CHROMEDRIVER):
        assert Path(binary).exists(), f"{binary} missing: apt-get install -y chromium chromium-driver (.ci/run does)"
    root = tmp_path_factory.mktemp("ui")
    processes = Processes(root)
    try:
        api = start_server(processes, root / "server-home", ui=True)
        base = api.removesuffix("/api")
        env = stack_env(root / "client-home", api, ACE_LATENT_DIR=str(root / "latents"),
                        ACE_AUDIO_DIR=str(root / "audio"))  # fmt: skip
        run_cli([sys.executable, "-m", "prefect", "work-pool", "create", "acestep-process", "--type", "process"], env)
        run_cli([sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--name", "demo",
                 "--prefect-file", str(REPO / "deployments" / "prefect.yaml")], env)  # fmt: skip
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
                     "--window-size=1400,1400", "--no-first-run", "--disable-extensions"):  # fmt: skip
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    SHOTS.mkdir(parents=True, exist_ok=True)
    try:
        yield driver
    finally:
        driver.quit()


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
