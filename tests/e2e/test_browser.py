"""The studio's pages in a real browser (headless Chromium through Playwright), on the whole
embedded stack that `distill-studio up` starts (SQLite, Valkey, API, worker, UI, the demo teacher
and dataset).

One person's session, page by page: log in; upload a teacher (.pt2, the demo teacher's file
downloaded over the API) through the Models page and wait on its page until a worker inspected
it; open the demo teacher's page, its model card and its layer table; upload a dataset (.npz) through the Datasets page and see its samples; on New run plan a
ResNet-8 student, keep the suggested pairs, add attention transfer to CE + KD and launch 5
epochs; watch the run page update live until the run succeeds; launch a second run over the API;
compare the two on the Compare page and save the comparison for the team; create a token on the
Team page; and, as a teammate, open the comparison's shared link, log in and land on it.

Each page is saved to tests/e2e/screenshots/ (gitignored), and the set, scaled down, to
docs/screenshots/ (committed, shown in the docs). Skips only when /usr/bin/chromium is missing
(no browser is ever downloaded).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import digits_npz, free_port

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
SHOTS = ROOT / "tests" / "e2e" / "screenshots"
DOC_SHOTS = ROOT / "docs" / "screenshots"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
VIEWPORT = {"width": 1360, "height": 900}
UI_TIMEOUT_MS = 180_000  # a bound on waiting for content, wide for a busy 2-core machine

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing: install Debian's chromium package"
)


# --------------------------------------------------------------------------------------------
# The stack
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    data = tmp_path_factory.mktemp("browser-studio")
    api_port, ui_port, broker_port = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DS_")}
    env.update(
        DS_DATA_DIR=str(data),
        DS_API_PORT=str(api_port),
        DS_UI_PORT=str(ui_port),
        DS_BROKER_PORT=str(broker_port),
        PYTHONUNBUFFERED="1",
    )
    log = data / "up.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "up"],
        cwd=ROOT,
        env=env,
        stdout=open(log, "wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        text = ""
        deadline = time.time() + 420  # the demo teacher trains first (~30 s on an idle machine)
        while time.time() < deadline:
            text = log.read_text(errors="replace")
            if "Press Ctrl-C to stop." in text or proc.poll() is not None:
                break
            time.sleep(1)
        assert "Press Ctrl-C to stop." in text, text[-4000:]
        login = re.search(r"login:\s+(\S+) / (\S+)", text)
        token = re.search(r"API token: (\S+)", text)
        assert login and token, text
        yield {
            "api": f"http://127.0.0.1:{api_port}",
            "ui": f"http://127.0.0.1:{ui_port}",
            "username": login.group(1),
            "password": login.group(2),
            "token": token.group(1),
            "data": data,
        }
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


# --------------------------------------------------------------------------------------------
# Streamlit in a browser
# --------------------------------------------------------------------------------------------


def settle(page: Any, quiet_ms: int = 600, timeout_s: float = 180) -> None:
    """Wait until the app stops running its script (the status widget gone for `quiet_ms`)."""
    deadline = time.time() + timeout_s
    quiet_since = None
    while time.time() < deadline:
        running = page.locator('[data-testid="stStatusWidget"]').count() > 0
        if running:
            quiet_since = None
        elif quiet_since is None:
            quiet_since = time.time()
        elif (time.time() - quiet_since) * 1000 >= quiet_ms:
            return
        page.wait_for_timeout(100)


def nav(page: Any, label: str) -> None:
    """Open a page from the sidebar navigation (keeps the session, unlike a new URL)."""
    page.locator('[data-testid="stSidebarNav"]').get_by_role("link", name=label).click()
    settle(page)


def main(page: Any) -> Any:
    return page.locator('[data-testid="stMain"]')


def heading(page: Any, text: str, timeout_ms: int = UI_TIMEOUT_MS) -> None:
    main(page).get_by_role("heading", name=text).first.wait_for(timeout=timeout_ms)


def shows(page: Any, text: str, timeout_s: float = UI_TIMEOUT_MS / 1000) -> None:
    """Wait until the main area's text contains `text` (a page renders in several passes, so
    one read right after a heading appears may come before the rest of the page)."""
    deadline = time.time() + timeout_s
    while text not in main(page).inner_text():
        assert time.time() < deadline, f"the page never showed {text!r}"
        page.wait_for_timeout(200)


def select(page: Any, label: str, option: str) -> None:
    """Pick the option whose text contains `option` in the selectbox labelled `label`."""
    main(page).get_by_role("combobox", name=label, exact=True).click()
    page.get_by_role("option").filter(has_text=option).first.click()
    settle(page)


def log_in(page: Any, stack: dict[str, Any]) -> None:
    """Fill in the login form with the stack's first admin and press Log in."""
    main(page).get_by_label("Username", exact=True).fill(stack["username"])
    main(page).get_by_label("Password", exact=True).fill(stack["password"])
    click(page, "Log in")


def select_typed(page: Any, label: str, option: str) -> None:
    """`select`, typing `option` into the box first (a long list draws only its first items)."""
    box = main(page).get_by_role("combobox", name=label, exact=True)
    box.click()
    box.press_sequentially(option)
    page.get_by_role("option").filter(has_text=option).first.click()
    settle(page)


def multiselect_add(page: Any, label: str, option: str) -> None:
    box = main(page).get_by_role("combobox", name=label, exact=True)
    box.click()
    box.press_sequentially(option)
    page.get_by_role("option").filter(has_text=option).first.click()
    page.keyboard.press("Escape")
    settle(page)


def number(page: Any, label: str, value: float) -> None:
    field = main(page).get_by_label(label, exact=True)
    field.fill(f"{value:g}")
    field.press("Enter")
    settle(page)


def click(page: Any, name: str, exact: bool = True) -> None:
    main(page).get_by_role("button", name=name, exact=exact).first.click()
    settle(page)


def in_table(page: Any, text: str) -> None:
    """Wait until a dataframe (a canvas, with hidden accessible cells) holds `text`."""
    main(page).locator('[role="gridcell"]').filter(has_text=text).first.wait_for(state="attached")


def shoot(page: Any, name: str, max_height: int = 2600) -> Path:
    """A picture of the whole page: the window is made as tall as the page's content first
    (Streamlit scrolls inside its own container, so a full-page screenshot alone would not), up
    to `max_height`, and scrolled to the top, so a page taller than that loses its bottom, never
    its title and first sections."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.mouse.move(0, 0)  # no hover effects in the picture
    height = page.evaluate(
        "() => { const m = document.querySelector('[data-testid=\"stMain\"]');"
        " return m ? m.scrollHeight : document.body.scrollHeight; }"
    )
    page.set_viewport_size(
        {"width": VIEWPORT["width"], "height": min(max(int(height), 700), max_height)}
    )
    page.wait_for_timeout(800)
    scroll_top(page)
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path))
    page.set_viewport_size(VIEWPORT)
    return path


def scroll_top(page: Any) -> None:
    """Scroll the page, and every scrolled container of Streamlit's, back to the top."""
    page.evaluate(
        "() => { window.scrollTo(0, 0);"
        ' for (const el of document.querySelectorAll(\'[data-testid="stMain"], '
        '[data-testid="stAppViewContainer"], [data-testid="stAppScrollToBottomContainer"],'
        " section, main')) { el.scrollTop = 0; } }"
    )
    page.wait_for_timeout(300)


def click_table_row(page: Any, table_index: int, row: int) -> None:
    """Select row `row` of the `table_index`-th dataframe (a canvas: click its row-marker cell)."""
    grid = main(page).locator('[data-testid="stDataFrame"]').nth(table_index)
    grid.scroll_into_view_if_needed()
    box = grid.bounding_box()
    assert box is not None
    page.mouse.click(box["x"] + 18, box["y"] + 35 * (row + 1) + 17)
    settle(page)


# --------------------------------------------------------------------------------------------
# The test
# --------------------------------------------------------------------------------------------


def upload_on_page(page: Any, expander: str, path: Path, name: str, button: str) -> None:
    """Open the page's upload form, pick the file, name it and press the upload button."""
    main(page).get_by_text(expander).click()
    main(page).locator('input[type="file"]').set_input_files(str(path))
    settle(page)
    main(page).get_by_label("Name", exact=True).fill(name)
    main(page).get_by_label("Name", exact=True).press("Enter")
    settle(page)
    click(page, button)


def _api(stack: dict[str, Any]) -> httpx.Client:
    return httpx.Client(
        base_url=f"{stack['api']}/api/v1",
        timeout=60,
        headers={"Authorization": f"Bearer {stack['token']}"},
    )


def _wait_run(http: httpx.Client, run_id: int, timeout_s: float = 480) -> dict[str, Any]:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        run = http.get(f"/runs/{run_id}").json()
        if run["status"] in ("succeeded", "failed", "cancelled"):
            return run
        time.sleep(1)
    raise AssertionError(f"run {run_id} did not finish in {timeout_s:g}s")


def _ready(http: httpx.Client, kind: str, name: str, timeout_s: float = 360) -> dict[str, Any]:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        items = [
            i
            for i in http.get(f"/{kind}", params={"name": name}).json()["items"]
            if i["name"] == name
        ]
        if items and items[0]["status"] in ("ready", "failed"):
            assert items[0]["status"] == "ready", items[0]
            return items[0]
        time.sleep(0.5)
    raise AssertionError(f"{kind} {name} not ready after {timeout_s:g}s")


def test_pages_in_a_browser(stack: dict[str, Any], browser: Any, tmp_path: Path) -> None:
    http = _api(stack)
    teacher = _ready(http, "models", "digits-teacher")
    demo_data = _ready(http, "datasets", "digits")
    page = browser.new_page(viewport=VIEWPORT)
    page.set_default_timeout(UI_TIMEOUT_MS)
    shots = []

    # -- log in ----------------------------------------------------------------------------
    page.goto(stack["ui"])
    main(page).get_by_label("Username", exact=True).wait_for()
    settle(page)
    shots.append(shoot(page, "login"))
    log_in(page, stack)
    heading(page, "Runs")

    # -- upload a teacher (.pt2) through the Models page; its page waits for the inspection -----
    nav(page, "Models")
    heading(page, "Models")
    in_table(page, "digits-teacher")
    pt2 = tmp_path / "digits-teacher.pt2"
    download = http.get(f"/models/{teacher['id']}/download")
    assert download.status_code == 200, download.text
    pt2.write_bytes(download.content)
    upload_on_page(page, "Upload a teacher", pt2, "uploaded-teacher", "Upload teacher")
    heading(page, "uploaded-teacher · v1")  # the new model's page, refreshing itself
    main(page).get_by_role("tab", name="Layers by stage").wait_for(timeout=300_000)  # ready
    shows(page, "ready")
    uploaded_teacher = _ready(http, "models", "uploaded-teacher")
    assert uploaded_teacher["format"] == "pt2" and uploaded_teacher["sha256"] == teacher["sha256"]
    assert uploaded_teacher["card"]["params"] == teacher["card"]["params"]

    # -- the models list with both, and the demo teacher's page: card and layer table ----------
    nav(page, "Models")
    heading(page, "Models")
    in_table(page, "uploaded-teacher")
    in_table(page, "digits-teacher")
    shots.append(shoot(page, "models"))
    listed = [m["name"] for m in http.get("/models").json()["items"]]  # the table's order
    click_table_row(page, 0, listed.index("digits-teacher"))
    heading(page, "digits-teacher · v1")
    main(page).get_by_role("tab", name="Layers by stage").wait_for()
    main(page).get_by_text("Model card").first.click()  # the card, as a table
    main(page).locator('[data-testid="stTable"]').first.wait_for()
    card_text = main(page).locator('[data-testid="stTable"]').first.inner_text()
    assert "Parameters" in card_text and f"{teacher['card']['params']:,}" in card_text
    main(page).get_by_text("Stage 0").first.click()  # open the first stage's layer table
    settle(page)
    assert main(page).locator('[data-testid="stDataFrame"]').count() >= 1
    shots.append(shoot(page, "model"))

    # -- upload a dataset through the page ----------------------------------------------------
    nav(page, "Datasets")
    heading(page, "Datasets")
    upload = digits_npz(tmp_path / "digits-upload.npz")
    upload_on_page(page, "Upload a dataset", upload, "digits-upload", "Upload dataset")
    main(page).get_by_text("Uploaded digits-upload").wait_for()
    uploaded = _ready(http, "datasets", "digits-upload")
    assert uploaded["info"]["num_samples"] == 1797 and "preview" not in uploaded["info"]
    # the page refreshes itself until the preview is drawn
    main(page).locator('[data-testid="stImage"]').first.wait_for(timeout=240_000)
    settle(page)
    assert main(page).locator('[data-testid="stImage"]').count() == 16
    main(page).get_by_text("Train / validation split").wait_for()
    shots.append(shoot(page, "datasets"))

    # -- new run: plan, suggested pairs, ce + kd + at, 15 epochs --------------------------------
    nav(page, "New run")
    heading(page, "New run")
    select(page, "Teacher", "digits-teacher")
    select(page, "Dataset", "digits-upload")
    main(page).get_by_label("Run name", exact=True).fill("browser kd+at")
    main(page).get_by_label("Run name", exact=True).press("Enter")
    settle(page)
    select(page, "Student architecture", "(resnet8)")
    number(page, "width", 0.5)
    click(page, "Plan")
    main(page).get_by_text("fewer parameters than the teacher").wait_for(timeout=150_000)
    main(page).get_by_role("button", name="Suggested pairs").wait_for()
    multiselect_add(page, "Losses", "(at)")
    number(page, "Epochs", 8)  # long enough for the page to refresh a few times while it trains
    main(page).get_by_text("- name: at").first.wait_for()
    shots.append(shoot(page, "new_run", max_height=4400))  # the whole form, from the top
    click(page, "Launch run")

    # -- the run page follows the run live until it succeeds -----------------------------------
    heading(page, "browser kd+at")
    shows(page, "run #")
    run_id = int(re.search(r"run #(\d+)", main(page).inner_text()).group(1))  # type: ignore[union-attr]
    steps_seen: set[str] = set()
    deadline = time.time() + 600
    while time.time() < deadline:
        text = main(page).inner_text()
        step = re.search(r"Step\s*\n?\s*([\d,]+/[\d,]+)", text)
        if step:
            steps_seen.add(step.group(1))
        if "Evaluation" in text and "succeeded" in text:
            break
        page.wait_for_timeout(700)
    assert "Evaluation" in main(page).inner_text(), "the run page never showed the result"
    assert len(steps_seen) >= 2, f"the page did not update live: {steps_seen}"
    run = http.get(f"/runs/{run_id}").json()
    assert run["status"] == "succeeded" and run["summary"]["student_top1"] > 0.5
    main(page).get_by_text("Artifacts").first.wait_for()
    settle(page)
    shots.append(shoot(page, "run"))

    # -- a second run over the API, then compare the two ---------------------------------------
    config = {
        **run["config"],
        "name": "api kd only",
        "losses": [{"name": "ce"}, {"name": "kd", "params": {"temperature": 2.0}}],
        "layer_pairs": [],
        "training": {**run["config"]["training"], "epochs": 2},  # only compared, not followed
    }
    config["dataset"] = {**config["dataset"], "dataset_id": demo_data["id"]}
    second = http.post("/runs", json=config)
    assert second.status_code == 201, second.text
    second_id = second.json()["id"]
    assert _wait_run(http, second_id)["status"] == "succeeded"

    nav(page, "Runs")
    heading(page, "Runs")
    in_table(page, "api kd only")
    shots.append(shoot(page, "runs"))

    nav(page, "Compare")
    heading(page, "Compare runs")
    multiselect_add(page, "Runs to compare", f"#{run_id} ")
    multiselect_add(page, "Runs to compare", f"#{second_id} ")
    main(page).get_by_role("heading", name="Config differences").wait_for()
    main(page).locator('[data-testid="stVegaLiteChart"]').nth(2).wait_for()
    main(page).get_by_label("Name", exact=True).fill("kd+at vs kd")
    click(page, "Save comparison for the team")
    main(page).get_by_text("Saved.").wait_for()
    saved = http.get("/comparisons").json()["items"]
    assert [c["run_ids"] for c in saved if c["name"] == "kd+at vs kd"][0] == [run_id, second_id]
    settle(page)
    shots.append(shoot(page, "compare"))

    # -- the team page ---------------------------------------------------------------------------
    nav(page, "Team & tokens")
    heading(page, "Team & tokens")
    main(page).get_by_label("Name", exact=True).fill("ci-nightly")
    click(page, "Create token")
    secret = main(page).locator('[data-testid="stCode"]').first.inner_text().strip()
    assert secret.startswith("ds_")
    me = httpx.get(f"{stack['api']}/api/v1/auth/me", headers={"Authorization": f"Bearer {secret}"})
    assert me.status_code == 200
    shots.append(shoot(page, "team"))

    # -- a teammate opens the shared link: log in, land on the comparison -----------------------
    shared = [c for c in saved if c["name"] == "kd+at vs kd"][0]
    other = browser.new_page(viewport=VIEWPORT)
    other.set_default_timeout(UI_TIMEOUT_MS)
    other.goto(f"{stack['ui']}/compare?comparison={shared['id']}")
    log_in(other, stack)
    heading(other, "Compare runs")
    main(other).get_by_role("heading", name="Config differences").wait_for()
    shows(other, f"#{run_id} browser kd+at")
    other.close()

    assert teacher["id"] == run["teacher_model_id"]
    publish(shots)


def test_text_pages_in_a_browser(stack: dict[str, Any], browser: Any, tmp_path: Path) -> None:
    """A language model through the pages: the demo causal LM (a Hugging Face checkpoint zip)
    and its corpus uploaded over the API; New run adapts to the task (max length, the
    teacher's blocks to map, text students, LM losses) and launches a 2-block student; the run
    page shows perplexity and the teacher's and the student's continuations side by side."""
    from tests.lm_helpers import lm_demo_files

    http = _api(stack)
    demo = lm_demo_files()
    with demo.teacher.open("rb") as fh:
        r = http.post(
            "/models", files={"file": ("lm.zip", fh)}, data={"name": "lm-teacher", "format": "hf"}
        )
    assert r.status_code == 201, r.text
    corpus = demo.write_text(tmp_path / "corpus.txt", 120)
    with corpus.open("rb") as fh:
        d = http.post("/datasets", files={"file": ("corpus.txt", fh)}, data={"name": "lm-corpus"})
    assert d.status_code == 201, d.text
    _ready(http, "models", "lm-teacher")
    _ready(http, "datasets", "lm-corpus")

    page = browser.new_page(viewport=VIEWPORT)
    page.set_default_timeout(UI_TIMEOUT_MS)
    page.goto(stack["ui"])
    log_in(page, stack)
    heading(page, "Runs")

    nav(page, "New run")
    heading(page, "New run")
    select(page, "Teacher", "lm-teacher")
    select(page, "Dataset", "lm-corpus")
    select(page, "Task", "Causal language modelling")
    main(page).get_by_label("Run name", exact=True).fill("browser lm")
    main(page).get_by_label("Run name", exact=True).press("Enter")
    settle(page)
    shows(page, "Layer mapping by blocks")  # the teacher's blocks, to map onto the student's
    in_table(page, "transformer.h.3")
    select_typed(page, "Student architecture", "hf_layers")
    number(page, "max length", 32)
    number(page, "Epochs", 2)
    main(page).get_by_text("task: causal_lm").first.wait_for()
    main(page).get_by_text("max_length: 32").first.wait_for()
    shots = [shoot(page, "new_run_lm", max_height=4400)]
    click(page, "Launch run")

    heading(page, "browser lm")
    shows(page, "run #")
    run_id = int(re.search(r"run #(\d+)", main(page).inner_text()).group(1))  # type: ignore[union-attr]
    run = _wait_run(http, run_id)
    assert run["status"] == "succeeded", run.get("error")
    assert run["config"]["task"] == "causal_lm" and run["config"]["task_params"]["max_length"] == 32
    shows(page, "Teacher and student on validation samples")
    shows(page, "The student after each epoch")
    text = main(page).inner_text()
    assert "perplexity" in text.lower()
    assert "Teacher" in text and "Student" in text
    prompt = http.get(f"/runs/{run_id}/artifacts").json()
    predictions = next(a for a in prompt if a["kind"] == "predictions")
    first = http.get(f"/artifacts/{predictions['id']}/download").json()[0]
    shows(page, first["prompt"].strip().splitlines()[0][:30])  # the sample itself, as text
    shots.append(shoot(page, "run_lm"))
    page.close()
    publish(shots)


def publish(shots: list[Path], width: int = 1100) -> None:
    """Copy the screenshots to docs/screenshots/, scaled to `width` and reduced to 256 colours
    (small enough to commit)."""
    from PIL import Image

    DOC_SHOTS.mkdir(parents=True, exist_ok=True)
    for shot in shots:
        with Image.open(shot) as img:
            img = img.convert("RGB")
            if img.width > width:
                img = img.resize((width, round(img.height * width / img.width)), Image.LANCZOS)
            img.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(
                DOC_SHOTS / shot.name, optimize=True
            )
