"""The dashboard in a real browser: Debian's chromium driven by Selenium against a live service (the API
under uvicorn and a real Celery worker training the tiny model: tests/workers/jobs/conftest.py).

One flow, as an operator would click it: sign in, upload (a bad file, one over the size limit, then
good ones), create suites, submit a job, watch its progress bar move, read the gate table, promote
(twice: the second changes nothing), lose a compare-and-set race, roll back, create a read-only
token, sign out; then the read-only token sees no write controls, its
forged POST is refused, and revoking it signs it out. Every page is photographed: into a temporary
folder, or into docs/dashboard/ with `SDFT_SCREENSHOTS_DIR=docs/dashboard` (a plain test run must not
rewrite files of the checkout)."""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.select import Select
from selenium.webdriver.support.wait import WebDriverWait

from tests.workers.jobs.conftest import TERMINAL, Service, make_service

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")

pytestmark = [
    pytest.mark.ui,
    pytest.mark.skipif(
        not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()),
        reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)",
    ),
]

DEMOS = "".join(
    json.dumps({"prompt": f"What is {i} plus {i}?", "demonstration": f"{i} plus {i} is {2 * i}."}) + "\n"
    for i in range(6)
)
BAD_DEMOS = DEMOS + '{"prompt": "What is 9 plus 9?"}\n{"demonstration": "no prompt"}\nnot json at all\n'
SUITE = "".join(
    json.dumps({"id": f"q{i}", "prompt": f"What is {i} plus {i}?", "reference": f"{2 * i}"}) + "\n"
    for i in range(4)
)
GENERAL = "".join(
    json.dumps({"id": f"g{i}", "prompt": f"Name colour number {i}.", "reference": "red"}) + "\n"
    for i in range(4)
)
WIDTH = 1280
# Small, so that a file over it is quick to send; every other file of the flow is far under it.
UPLOAD_LIMIT = 64 * 1024


@pytest.fixture()
def live(tmp_path: Path, tiny_model_dir: Path) -> Iterator[Service]:
    service = make_service(tmp_path / "service", tiny_model_dir, "sqlite")
    service.env["SDFT_SSE_POLL_SECONDS"] = "0.2"  # the progress bar moves in smaller jumps
    service.env["SDFT_MAX_UPLOAD_BYTES"] = str(UPLOAD_LIMIT)
    service.start_api()
    service.start_worker()  # it imports torch while the browser signs in and uploads
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture()
def browser() -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        f"--window-size={WIDTH},900",
    ):
        options.add_argument(argument)
    # A driver path given: Selenium Manager is never asked to download a browser or a driver.
    driver = webdriver.Chrome(
        service=webdriver.ChromeService(executable_path=str(CHROMEDRIVER)), options=options
    )
    driver.implicitly_wait(0)
    try:
        yield driver
    finally:
        driver.quit()


def shoot(driver: WebDriver, name: str) -> None:
    """The whole page (the window grows to it), saved as <SDFT_SCREENSHOTS_DIR>/<name>.png."""
    folder = Path(os.environ.get("SDFT_SCREENSHOTS_DIR") or Path(tempfile.gettempdir()) / "sdft-dashboard")
    folder.mkdir(parents=True, exist_ok=True)
    # The window's height includes the browser's own bars: add them so the viewport fits the page.
    page, bars = driver.execute_script(
        "return [document.documentElement.scrollHeight, window.outerHeight - window.innerHeight]"
    )
    driver.set_window_size(WIDTH, min(max(int(page), 600), 3000) + int(bars))
    driver.save_screenshot(str(folder / f"{name}.png"))
    driver.set_window_size(WIDTH, 900)


def wait(driver: WebDriver, seconds: float = 30) -> WebDriverWait[WebDriver]:
    return WebDriverWait(driver, seconds, poll_frequency=0.05)


def css(driver: WebDriver, selector: str) -> Any:
    return driver.find_element(By.CSS_SELECTOR, selector)


def submit_form(driver: WebDriver, button: str) -> None:
    """Click a form's button and wait for the next page."""
    old = css(driver, "html")
    css(driver, button).click()
    wait(driver).until(lambda _: replaced(old))


def replaced(element: Any) -> bool:
    """Whether the element's document is gone. Chromium sometimes answers a query on a node of the
    replaced document with an inspector error ("Node with given id does not belong to the
    document", CI 2026-12-01) instead of a stale-element error: both mean the page changed."""
    try:
        element.is_enabled()
    except WebDriverException:  # StaleElementReferenceException included
        return True
    return False


def upload(
    driver: WebDriver, tmp_path: Path, name: str, text: str, purpose: str, grader: str = "exact_match"
) -> None:
    path = tmp_path / name
    path.write_text(text)
    driver.get(driver.current_url.split("/ui/")[0] + "/ui/files")
    Select(css(driver, "#purpose")).select_by_visible_text(purpose)
    Select(css(driver, "select[name=grader]")).select_by_visible_text(grader)
    css(driver, "#file").send_keys(str(path))
    submit_form(driver, "#upload")


def create_suite_from_file(driver: WebDriver, name: str) -> None:
    submit_form(driver, "#make-suite")
    css(driver, "input[name=name]").send_keys(name)
    Select(css(driver, "#new-suite select[name=grader]")).select_by_visible_text("contains")
    tolerance = css(driver, "input[name=tolerance]")
    tolerance.clear()
    tolerance.send_keys("100")  # a random tiny model's scores move arbitrarily: this tests the flow
    submit_form(driver, "#create-suite")
    assert "The suite was created." in css(driver, ".notice").text


def sign_in(driver: WebDriver, url: str, token: str) -> None:
    driver.get(f"{url}/ui/jobs")
    assert "/ui/sign-in" in driver.current_url
    css(driver, "#token").send_keys(token)
    submit_form(driver, "button.primary")
    assert driver.current_url.endswith("/ui/jobs"), driver.current_url


def watch_progress(driver: WebDriver, timeout: float, moves: int | None = None) -> list[float]:
    """The values the job page's progress bar takes, until the job ends (or it has taken `moves`
    different values above zero)."""
    seen: list[float] = []
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            value = float(css(driver, "#job-progress").get_attribute("value") or 0)
            status = css(driver, "#job-status .badge").text
        except StaleElementReferenceException:  # the page reloaded after the gate
            continue
        if not seen or value != seen[-1]:
            seen.append(value)
        if status in TERMINAL or (moves is not None and len({v for v in seen if v > 0}) >= moves):
            return seen
        time.sleep(0.05)
    raise AssertionError(f"the job did not get there in {timeout} s; the bar showed {seen}")


def test_an_operator_runs_a_job_from_the_dashboard(live: Service, browser: WebDriver, tmp_path: Path) -> None:
    driver, url = browser, live.url
    driver.get(f"{url}/ui/jobs")
    wait(driver).until(EC.presence_of_element_located((By.ID, "token")))
    shoot(driver, "sign-in")
    sign_in(driver, url, live.token)

    # Upload: a bad file shows its rows' problems inline and stores nothing; then the real files.
    upload(driver, tmp_path, "bad.jsonl", BAD_DEMOS, "demonstrations")
    problems = css(driver, "#upload-error").text
    assert "Not stored" in problems and "7" in problems and "8" in problems and "9" in problems
    shoot(driver, "upload-errors")
    # A file the server refuses before reading it (its Content-Length is over the limit) comes back to
    # the form, which names the field and the limit, not as the API's JSON error.
    upload(driver, tmp_path, "huge.jsonl", DEMOS * (16 * UPLOAD_LIMIT // len(DEMOS)), "demonstrations")
    too_large = css(driver, "#upload-error").text
    assert f"file: the file is larger than the {UPLOAD_LIMIT}-byte limit" in too_large, too_large
    shoot(driver, "upload-too-large")
    upload(driver, tmp_path, "demos.jsonl", DEMOS, "demonstrations")
    demos_id = css(driver, "#file-id").text
    shoot(driver, "file")
    upload(driver, tmp_path, "alpha.jsonl", SUITE, "regression_suite", grader="contains")
    create_suite_from_file(driver, "alpha")
    upload(driver, tmp_path, "general.jsonl", GENERAL, "regression_suite", grader="contains")
    create_suite_from_file(driver, "general")
    shoot(driver, "suites")

    # Compose and submit: method auto (the readiness probe decides), a general suite to protect.
    driver.get(f"{url}/ui/jobs/new?file={demos_id}")
    css(driver, "input[name=skill]").send_keys("alpha")
    driver.find_element(By.XPATH, "//label[contains(., 'alpha')]/input[@name='suites']").click()
    driver.find_element(By.XPATH, "//label[contains(., 'general')]/input[@name='general_suites']").click()
    css(driver, "input[name=require_improvement]").click()
    for name, value in {
        "max_steps": "40",
        "batch_size": "4",
        "max_new_tokens": "8",
        "learning_rate": "0.001",
    }.items():
        css(driver, f"input[name={name}]").send_keys(value)
    Select(css(driver, "select[name=readiness_probe]")).select_by_visible_text("warn")
    shoot(driver, "compose")
    submit_form(driver, "#submit-job")
    job_id = driver.current_url.rsplit("/", 1)[1]
    assert job_id.startswith("job_")

    # The progress bar moves with the job's SSE stream, without reloading the page.
    seen = watch_progress(driver, timeout=180, moves=3)
    wait(driver, 30).until(EC.presence_of_element_located((By.CSS_SELECTOR, "#charts polyline")))
    shoot(driver, "job-running")
    # The list page follows the same job live, over its own stream.
    driver.switch_to.new_window("tab")
    driver.get(f"{url}/ui/jobs")
    row = f"tr[data-job='{job_id}']"
    first = css(driver, row).text
    wait(driver, 60).until(lambda d: css(d, row).text != first)
    shoot(driver, "jobs")
    driver.close()
    driver.switch_to.window(driver.window_handles[0])
    seen += watch_progress(driver, timeout=240)
    moving = [value for value in seen if value > 0]
    assert len(set(moving)) >= 3 and moving == sorted(moving), f"the bar should move forward: {seen}"

    # Finished: the page reloads with the gate table, the probe's verdict and the method choice.
    wait(driver, 30).until(EC.presence_of_element_located((By.CSS_SELECTOR, "#stage-1 table.gate")))
    assert css(driver, "#job-status .badge").text == "succeeded", live.job(job_id)
    gate = css(driver, "#stage-1 table.gate").text
    assert "alpha" in gate and "general" in gate and "new_skill" in gate and "prior" in gate
    stage = css(driver, "#stage-1").text
    assert "Readiness probe:" in stage and "Method choice:" in stage
    assert len(driver.find_elements(By.CSS_SELECTOR, "#charts polyline")) >= 2
    shoot(driver, "job")
    candidate = live.job(job_id)["candidate_version_ids"][0]

    driver.get(f"{url}/ui/models")
    assert driver.find_elements(By.CSS_SELECTOR, f"a[data-version='{candidate}']")
    shoot(driver, "models")
    driver.get(f"{url}/ui/models/{candidate}")
    assert "alpha" in css(driver, "#heatmap").text
    shoot(driver, "version")

    # Promote production to the candidate through the confirmation page.
    css(driver, "#promote-form input[name=alias]").send_keys("production")
    submit_form(driver, "#promote-form button")
    assert "Accepted:" in css(driver, ".verdict").text
    shoot(driver, "promote-confirm")
    submit_form(driver, "#confirm")
    assert "The alias was moved." in css(driver, ".notice").text
    with live.client() as client:
        assert client.get("/v1/aliases/production").json()["version"] == candidate
    driver.get(f"{url}/ui/promote?alias=production&version={candidate}")
    submit_form(driver, "#confirm")
    assert "Nothing changed: the alias already pointed at that version." in css(driver, ".notice").text

    # Someone moves `staging` between the confirmation page and the click: nothing changes.
    driver.get(f"{url}/ui/promote?alias=staging&version={candidate}")
    with live.client() as client:
        moved = client.put("/v1/aliases/staging", json={"version": live.base_version_id})
        assert moved.status_code == 200, moved.text
    submit_form(driver, "#confirm")
    assert "Someone moved" in css(driver, "#moved").text
    shoot(driver, "conflict")
    with live.client() as client:
        assert client.get("/v1/aliases/staging").json()["version"] == live.base_version_id

    # Roll production back to the base.
    driver.get(f"{url}/ui/aliases/production")
    submit_form(driver, "#rollback")
    shoot(driver, "rollback-confirm")
    submit_form(driver, "#confirm")
    assert "The alias was rolled back." in css(driver, ".notice").text
    assert "rollback" in css(driver, "#history").text
    shoot(driver, "alias")
    driver.get(f"{url}/ui/aliases")
    shoot(driver, "aliases")
    with live.client() as client:
        assert client.get("/v1/aliases/production").json()["version"] == live.base_version_id

    # Admin: a read-only token, its secret shown once.
    driver.get(f"{url}/ui/admin/tokens")
    css(driver, "#new-token input[name=name]").send_keys("viewer")
    submit_form(driver, "#create-token")
    viewer = css(driver, "#secret").text
    shoot(driver, "token-created")
    driver.get(f"{url}/ui/admin/tokens")
    assert "viewer" in css(driver, "#tokens").text and viewer not in driver.page_source
    shoot(driver, "tokens")
    submit_form(driver, "#sign-out button")
    assert "You are signed out." in css(driver, ".notice").text
    assert "/ui/sign-in" in driver.current_url

    # The read-only token: no write controls anywhere, and a forged POST is refused.
    sign_in(driver, url, viewer)
    for path in (
        "/ui/jobs",
        f"/ui/jobs/{job_id}",
        "/ui/suites",
        f"/ui/models/{candidate}",
        "/ui/aliases/production",
    ):
        driver.get(url + path)
        forms = driver.find_elements(By.CSS_SELECTOR, "form[method=post]")
        assert [form.get_attribute("id") for form in forms] == ["sign-out"], path
        assert not driver.find_elements(By.LINK_TEXT, "New job")
    shoot(driver, "read-only")
    driver.execute_script(
        """
        const form = document.createElement("form");
        form.method = "post";
        form.action = "/ui/aliases/production/rollback";
        form.appendChild(document.querySelector("#sign-out input[name=csrf_token]").cloneNode());
        document.body.appendChild(form);
        form.submit();
        """
    )
    wait(driver).until(EC.presence_of_element_located((By.CSS_SELECTOR, ".error-page")))
    refused = css(driver, ".error-page").text
    assert "403" in refused and "models:promote" in refused and "insufficient_scope" in refused
    shoot(driver, "forbidden")
    with live.client() as client:
        assert client.get("/v1/aliases/production").json()["version"] == live.base_version_id
        tokens = client.get("/v1/tokens").json()["data"]
        viewer_id = next(token["id"] for token in tokens if token["name"] == "viewer")
        assert client.delete(f"/v1/tokens/{viewer_id}").status_code == 200

    # Revoked: signed out at the next request.
    driver.get(f"{url}/ui/jobs")
    assert "/ui/sign-in" in driver.current_url
    assert "no longer valid" in css(driver, ".notice").text
