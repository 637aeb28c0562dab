"""The job report and the web console in a real browser: Debian's chromium driven by Playwright.

The browser is the system's /usr/bin/chromium (never a Playwright download); without it, or without the
`playwright` package, these tests skip and say why.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.status import JobStatus
from tests.service.client import TERMINAL, poll, submit, upload
from tests.service.conftest import FAST, Stack

pytestmark = [pytest.mark.browser, pytest.mark.slow]

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install -e '.[dev]'")

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
API_KEY = "console-test-key"  # the tests that run jobs
OTHER_KEY = "console-other-key"  # another tenant: sees none of their jobs
AUTH = {"Authorization": f"Bearer {API_KEY}"}
DYNAMIC_QUANTIZE = '{"steps": [{"type": "quantize", "mode": "dynamic"}]}'
TIMEOUT_MS = 120_000


@pytest.fixture(scope="module")
def browser() -> Iterator[sync_api.Browser]:
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed: apt-get install -y chromium (`make test` and .ci/run do it as root)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


class PageWatch:
    """A fresh page that records console errors and uncaught exceptions."""

    def __init__(self, browser: sync_api.Browser) -> None:
        self.context = browser.new_context(accept_downloads=True, viewport={"width": 1280, "height": 900})
        self.page = self.context.new_page()
        self.page.set_default_timeout(30_000)
        self.errors: list[str] = []
        self.page.on("console", lambda message: message.type == "error" and self.errors.append(message.text))
        self.page.on("pageerror", lambda error: self.errors.append(f"uncaught: {error}"))

    def use_key(self, key: str) -> None:
        """As if the key had been entered in this tab before: requests of the console and of pages carry it."""
        script = f"if (window === window.top) sessionStorage.setItem('onnx-compress.api-key', {key!r});"
        self.context.add_init_script(script)  # not in the report's sandboxed frame, which has no storage
        self.context.set_extra_http_headers({"Authorization": f"Bearer {key}"})

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def watch(browser: sync_api.Browser) -> Iterator[PageWatch]:
    watched = PageWatch(browser)
    yield watched
    watched.close()


@pytest.fixture(scope="module")
def console_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One embedded service with API keys for every test here (one start-up: they are slow on a loaded machine)."""
    root = tmp_path_factory.mktemp("console")
    env = {"DATA_DIR": str(root / "data"), **FAST, "LATENCY_MAX_SECONDS": "5", "API_KEYS": f"{API_KEY},{OTHER_KEY}"}
    stack = Stack(env, root)
    stack.start_api("serve")
    yield stack
    stack.stop()


def client_of(stack: Stack) -> httpx.Client:
    assert stack.api is not None
    return httpx.Client(base_url=stack.api.url, timeout=30, headers=AUTH)


def test_report_of_prune_distill_quantize_job_renders_its_charts(
    console_stack: Stack, watch: PageWatch, digits_cnn, tmp_path: Path
) -> None:
    datasets = {}
    with client_of(console_stack) as client:
        model = upload(client, "/v1/models", digits_cnn.path)
        for role, split in (("train", "train"), ("eval", "test")):
            path = digits_cnn.write_npz(tmp_path / f"{role}.npz", split=split, limit=256)
            datasets[role] = upload(client, "/v1/datasets", path)["id"]
        steps = [
            {"type": "prune", "method": "structured", "sparsity": 0.25},
            {"type": "distill", "epochs": 2},
            {"type": "quantize", "mode": "dynamic"},
        ]
        job = submit(client, {"model_id": model["id"], "steps": steps, "datasets": datasets})
        assert client.get(f"/v1/jobs/{job['id']}/report", headers={"Authorization": ""}).status_code == 401
        early = client.get(f"/v1/jobs/{job['id']}/report")  # queued or running: the report shows what exists
        assert early.status_code == 200 and early.headers["content-type"].startswith("text/html")
        assert job["id"] in early.text
        job = poll(client, job["id"], timeout=300)
        assert job["status"] == JobStatus.SUCCEEDED, job["error"]
        assert client.get("/v1/jobs/not-a-job/report").status_code == 404

    watch.use_key(API_KEY)
    page = watch.page
    response = page.goto(f"{console_stack.api.url}/v1/jobs/{job['id']}/report")
    assert response is not None and response.status == 200
    page.wait_for_load_state("load")
    assert watch.errors == []
    charts = page.locator("svg")
    assert charts.count() >= 4  # summary bars, per-step lines, channels per layer, loss curves, latency
    assert page.locator("svg rect, svg path, svg polyline, svg line").count() > 20
    box = charts.first.bounding_box()
    assert box is not None and box["width"] > 50 and box["height"] > 20
    text = page.locator("body").inner_text()
    for expected in ("prune", "distill", "quantize", digits_cnn.path.name, "train.npz", "eval.npz"):
        assert expected in text, expected
    screenshot = tmp_path / "report.png"
    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.stat().st_size > 10_000


def test_console_uploads_submits_follows_and_opens_the_report(
    console_stack: Stack, watch: PageWatch, digits_cnn, tmp_path: Path
) -> None:
    watch.use_key(API_KEY)
    page = watch.page
    page.goto(console_stack.api.url)
    page.get_by_label("Model (.onnx)").set_input_files(str(digits_cnn.path))
    eval_npz = digits_cnn.write_npz(tmp_path / "digits_eval.npz", split="test", limit=200)
    page.get_by_label("Eval").set_input_files(str(eval_npz))

    with client_of(console_stack) as client:
        jobs_before = len(client.get("/v1/jobs").json()["items"])
    spec = page.get_by_label("Spec (JSON)")
    spec.fill('{"steps": [{"type": "quantize", "mode": "dynamc"}]}')  # checked against the live schema
    sync_api.expect(page.locator("#spec-check")).to_contain_text("steps[0].mode must be one of")
    page.get_by_role("button", name="Upload and submit").click()
    sync_api.expect(page.locator("#submit-error")).to_contain_text("mode must be one of")
    spec.fill('{"steps": [{"type": "quantize", "mode": "dynamic", "colour": 1}]}')
    sync_api.expect(page.locator("#spec-check")).to_contain_text("steps[0].colour is not a known field")
    with client_of(console_stack) as client:
        assert len(client.get("/v1/jobs").json()["items"]) == jobs_before  # nothing was sent
    spec.fill(DYNAMIC_QUANTIZE)
    sync_api.expect(page.locator("#spec-check")).to_contain_text("matches the service's step schema")

    page.get_by_role("button", name="Upload and submit").click()
    sync_api.expect(page.locator("#job")).to_be_visible()
    sync_api.expect(page.locator("#job-progress-text")).to_have_text("100%", timeout=TIMEOUT_MS)
    sync_api.expect(page.locator("#job-status")).to_have_text("succeeded")
    report = page.frame_locator("#job-report")
    sync_api.expect(report.locator("svg").first).to_be_visible(timeout=30_000)
    assert report.locator("svg").count() >= 2
    sync_api.expect(page.locator("#job-events")).to_contain_text("succeeded")
    job_id = page.locator("#job-title").inner_text().removeprefix("Job ")

    row = page.locator(f'#jobs-body tr[data-job-id="{job_id}"]')
    sync_api.expect(row).to_contain_text("succeeded")
    sync_api.expect(row).to_contain_text("×")  # size and latency ratios

    with page.expect_download() as download_info:
        page.get_by_role("button", name="Download model.onnx").click()
    download = download_info.value
    saved = tmp_path / "compressed.onnx"
    download.save_as(saved)
    assert 0 < saved.stat().st_size < digits_cnn.path.stat().st_size
    page.screenshot(path=str(tmp_path / "console.png"), full_page=True)
    assert watch.errors == []


def test_console_asks_for_the_key_and_says_when_it_is_wrong(console_stack: Stack, watch: PageWatch) -> None:
    page = watch.page
    page.goto(console_stack.api.url)
    dialog = page.locator("#key-dialog")
    sync_api.expect(dialog).to_be_visible()
    sync_api.expect(dialog).to_contain_text("needs an API key")

    page.get_by_label("Key", exact=True).fill("not-the-key")
    page.get_by_role("button", name="Use this key").click()
    sync_api.expect(dialog).to_be_visible()
    sync_api.expect(page.locator("#key-error")).to_contain_text("Wrong API key")
    assert page.evaluate("sessionStorage.getItem('onnx-compress.api-key')") is None

    page.get_by_label("Key", exact=True).fill(OTHER_KEY)
    page.get_by_role("button", name="Use this key").click()
    sync_api.expect(dialog).to_be_hidden()
    sync_api.expect(page.locator("#jobs-empty")).to_be_visible()  # another tenant's jobs stay out of sight
    sync_api.expect(page.locator("#notice")).to_be_hidden()
    assert page.evaluate("sessionStorage.getItem('onnx-compress.api-key')") == OTHER_KEY
    sync_api.expect(page.locator("#spec-check")).to_contain_text("matches the service's step schema")

    page.reload()  # the key stays for the tab's session: no dialog again
    sync_api.expect(page.locator("#jobs-empty")).to_be_visible()
    sync_api.expect(dialog).to_be_hidden()


def test_console_cancels_a_running_job(console_stack: Stack, watch: PageWatch, digits_cnn, tmp_path: Path) -> None:
    train = digits_cnn.write_npz(tmp_path / "train.npz", split="train")
    with client_of(console_stack) as client:
        model = upload(client, "/v1/models", digits_cnn.path)
        steps = [{"type": "distill", "epochs": 200, "batch_size": 1, "max_seconds": 120}]  # minutes; canceled early
        body = {
            "model_id": model["id"],
            "steps": steps,
            "datasets": {"train": upload(client, "/v1/datasets", train)["id"]},
        }
        job = poll(client, submit(client, body)["id"], timeout=60, until={JobStatus.RUNNING, *TERMINAL})
        assert job["status"] == JobStatus.RUNNING, job

    watch.use_key(API_KEY)
    page = watch.page
    page.goto(f"{console_stack.api.url}/#job={job['id']}")  # a link to one job opens it
    sync_api.expect(page.locator("#job-status")).to_have_text("running")
    page.get_by_role("button", name="Cancel job").click()
    sync_api.expect(page.locator("#job-status")).to_have_text("canceled", timeout=60_000)
    sync_api.expect(page.locator("#job-events")).to_contain_text("cancel")
    sync_api.expect(page.frame_locator("#job-report").locator("body")).to_contain_text("canceled")  # partial report
    sync_api.expect(page.get_by_role("button", name="Download model.onnx")).to_be_hidden()
    assert watch.errors == []
