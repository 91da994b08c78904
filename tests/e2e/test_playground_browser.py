"""The playground page in a real headless browser (Debian's /usr/bin/chromium driven by Playwright, no
browser download) against real servers: one open with two API processes, one with an API key.

Waits use CSS selectors only: the page's Content-Security-Policy forbids eval, which Playwright's
string predicates (wait_for_function) need. A screenshot goes to $FLOWMAP_TEST_ARTIFACTS or, without
it, to the pytest temporary directory.
"""

from __future__ import annotations

import os
import re
import signal
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path

import httpx
import pytest

from tests.e2e.browser import BROWSER_ARGS, CHROMIUM
from tests.integration.conftest import KEY, ServerProcess

TIMEOUT_MS = 30_000
SERVER_ARGS = ["--engine", "eager", "--max-steps", "4", "--max-samples", "64"]

if not CHROMIUM.exists():
    pytest.skip(
        f"{CHROMIUM} not installed (make sysdeps installs Debian's chromium)", allow_module_level=True
    )
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright not installed (pip install -e .[dev])"
)


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=BROWSER_ARGS)
        yield b
        b.close()


def models(checkpoints) -> list[str]:
    return ["--model", str(checkpoints["digits"]), "--model", str(checkpoints["gmm8"])]


@pytest.fixture(scope="module")
def open_server(checkpoints):
    s = ServerProcess([*models(checkpoints), *SERVER_ARGS, "--api-workers", "2"]).wait_ready()
    yield s
    assert s.stop() == 0


@pytest.fixture(scope="module")
def key_server(checkpoints):
    s = ServerProcess([*models(checkpoints), *SERVER_ARGS], env={"FLOWMAP_API_KEY": KEY}).wait_ready()
    yield s
    assert s.stop() == 0


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    d = os.environ.get("FLOWMAP_TEST_ARTIFACTS")
    if d:
        Path(d).mkdir(parents=True, exist_ok=True)
        return Path(d)
    return tmp_path_factory.mktemp("playground")


class Page:
    """A fresh browser page with its console errors, page errors and requests recorded."""

    def __init__(self, browser, url: str):
        self.context = browser.new_context(viewport={"width": 1400, "height": 1000})
        self.page = self.context.new_page()
        self.page.set_default_timeout(TIMEOUT_MS)
        self.errors: list[str] = []
        self.requests: list = []
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        self.page.on("request", lambda r: self.requests.append(r))
        self.url = url
        self.page.goto(url + "/")
        self.page.wait_for_selector("body[data-ready=true]")

    def close(self) -> None:
        self.context.close()

    def submit(self, action: str = "generate") -> None:
        """Press a submit button and wait until its section is no longer busy."""
        self.page.click(f"#gen-form button[value={action}]")
        self.page.wait_for_selector("#gen-form button[value=generate]:enabled")

    def images(self, selector: str) -> list[int]:
        """naturalWidth of every image under `selector` once all have loaded (0: did not decode)."""
        loc = self.page.locator(f"{selector} img")
        return [
            loc.nth(i).evaluate("img => img.decode().then(() => img.naturalWidth, () => 0)")
            for i in range(loc.count())
        ]


@pytest.fixture()
def page(browser, open_server):
    p = Page(browser, open_server.url)
    yield p
    p.close()


def test_page_loads_with_no_console_errors_and_only_talks_to_its_server(page):
    options = page.page.locator("#model option")
    assert [options.nth(i).get_attribute("value") for i in range(options.count())] == ["digits", "gmm8"]
    assert page.page.locator("#class option").count() == 11  # "all" and 0..9
    assert page.page.locator("#steps option").all_inner_texts() == ["1", "2", "3", "4", "auto (deadline)"]
    page.page.wait_for_selector("#stats-table")
    assert page.errors == []
    outside = [r.url for r in page.requests if not r.url.startswith((page.url, "data:"))]
    assert outside == []


def test_a_generation_shows_its_images_decoded_with_steps_and_latency(page, artifacts):
    page.page.fill("#count", "6")
    page.page.select_option("#steps", "2")
    page.page.fill("#seed", "3")
    page.page.press("#seed", "Enter")  # the form submits from the keyboard
    page.page.wait_for_selector("#grid img >> nth=5")
    assert page.images("#grid") == [8] * 6  # 8x8 digits, all decoded
    summary = page.page.inner_text("#summary")
    assert re.search(
        r"6 from digits: 2 steps used, 2 network calls per sample, [\d.]+ ms in the server .* seed 3\.",
        summary,
    ), summary
    row = page.page.locator("#log tbody tr").first.locator("td").all_inner_texts()
    assert row[1:5] == ["digits", "2", "2", "6"] and row[7] == "200" and float(row[5]) > 0
    page.page.screenshot(path=str(artifacts / "playground-generate.png"), full_page=True)
    assert page.errors == []


def test_the_steps_strip_shows_the_same_seed_at_four_step_counts(page, artifacts):
    page.page.fill("#count", "1")
    page.page.fill("#seed", "11")
    page.submit("strip")
    page.page.wait_for_selector("#strip-section[aria-busy=false]")
    assert page.images("#strip") == [8] * 4
    captions = page.page.locator("#strip figcaption").all_inner_texts()
    assert [c.split(" · ")[0] for c in captions] == ["1 step", "2 steps", "3 steps", "4 steps"]
    assert all(re.fullmatch(r"\d steps? · [\d.]+ ms", c) for c in captions), captions
    assert page.page.inner_text("#strip-h") == "Steps strip (seed 11)"
    page.page.screenshot(path=str(artifacts / "playground-strip.png"), full_page=True)
    assert page.errors == []


def test_auto_steps_report_the_steps_the_server_chose(page):
    page.page.select_option("#steps", "auto")
    page.page.fill("#deadline", "2000")
    page.page.fill("#count", "2")
    page.submit()
    page.page.wait_for_selector("#grid img >> nth=1")
    assert re.search(r"2 from digits: [1-4] steps? used", page.page.inner_text("#summary"))
    assert page.page.locator("#log tbody tr").first.locator("td").nth(2).inner_text() == "auto ≤ 2000 ms"


def test_the_sampler_is_picked_from_what_the_model_serves(page):
    assert page.page.locator("#sampler option").all_inner_texts() == ["flowmap", "consistency"]
    assert page.page.input_value("#sampler") == "flowmap"  # an esd checkpoint's default
    page.page.select_option("#sampler", "consistency")
    page.page.fill("#count", "2")
    page.submit()
    page.page.wait_for_selector("#grid img >> nth=1")
    assert "1 step used (consistency sampler)," in page.page.inner_text("#summary")


def test_steering_sends_the_reward_and_shows_its_cost(page):
    rewards = page.page.locator("#steer-reward option").all_inner_texts()
    assert rewards[0] == "none" and len(rewards) == 12  # none, class:0..9, ink
    assert page.page.locator("#steer-particles").is_disabled()
    page.page.select_option("#steer-reward", "class:3")
    assert page.page.locator("#sampler").is_disabled()  # steering runs the consistency sampler
    page.page.fill("#steer-particles", "4")
    page.page.select_option("#steps", "2")
    page.page.fill("#count", "3")
    page.page.fill("#seed", "5")
    page.submit()
    page.page.wait_for_selector("#grid img >> nth=2")
    assert page.images("#grid") == [8] * 3
    summary = page.page.inner_text("#summary")
    assert "2 steps used (consistency sampler), 8 network calls per sample," in summary, summary
    page.page.fill("#steer-particles", "100000")  # past the server's limit: its own message
    page.submit()
    assert "steer.particles" in page.page.locator("#error").inner_text()
    page.page.select_option("#model", "gmm8")
    assert page.page.locator("#steer-reward option").all_inner_texts()[1] == "mode:0"
    assert all("status of 422" in e for e in page.errors), page.errors  # the browser logs the refused request


def test_invalid_input_shows_the_servers_422_message(page):
    # past the form's own limits, as a hand-edited page or a script could send it
    page.page.locator("#seed").evaluate(
        "e => { e.removeAttribute('pattern'); e.removeAttribute('maxlength'); }"
    )
    page.page.fill("#seed", "99999999999999999999")
    page.submit()
    error = page.page.locator("#error")
    assert error.is_visible()
    assert re.match(
        r"422 .*seed: Input should be less than or equal to 9223372036854775807", error.inner_text()
    )
    page.page.fill("#seed", "1")
    page.page.locator("#class").evaluate("s => { s.add(new Option('42', '42')); s.value = '42'; }")
    page.submit()
    assert "class_label: class_label 42 out of range: model 'digits' has classes 0..9" in error.inner_text()
    assert page.page.locator("#grid img").count() == 0
    assert page.page.locator("#log tbody tr").first.locator("td").last.inner_text() == "422"


def test_a_point_model_is_plotted_not_drawn_as_images(page):
    page.page.select_option("#model", "gmm8")
    assert page.page.locator("#class").is_disabled()
    page.submit()
    plot = page.page.wait_for_selector("#grid canvas.points")
    assert plot.get_attribute("aria-label") == "gmm8 samples: 64 points"
    page.submit("strip")
    assert page.page.locator("#strip canvas.points").count() == 4
    assert page.errors == []


def test_streaming_ends_with_the_images_a_plain_request_gives(page):
    page.page.fill("#count", "4")
    page.page.select_option("#steps", "3")
    page.page.fill("#seed", "5")
    page.page.check("#stream")
    page.submit()
    assert page.page.get_attribute("#grid", "data-previews").split() == ["1", "2", "3"]
    assert page.images("#grid") == [8] * 4
    assert "Previews streamed: steps 1 2 3." in page.page.inner_text("#summary")
    streamed = page.page.locator("#grid img").evaluate_all("imgs => imgs.map(i => i.src)")
    page.page.uncheck("#stream")
    page.submit()
    assert page.page.locator("#grid img").evaluate_all("imgs => imgs.map(i => i.src)") == streamed
    bodies = [r.post_data for r in page.requests if r.url.endswith("/v1/generate")]
    assert ['"stream":true' in b for b in bodies] == [True, False]
    page.page.select_option("#model", "gmm8")  # points stream as floats, plotted
    page.page.check("#stream")
    page.submit()
    assert page.page.get_attribute("#grid", "data-previews").split() == ["1", "2", "3"]
    assert page.page.locator("#grid canvas.points").count() == 1 and page.errors == []


def test_keyboard_focus_is_visible(page):
    page.page.focus("#model")
    page.page.keyboard.press("Tab")
    focused = page.page.evaluate("() => document.activeElement.id")
    style = page.page.evaluate("() => getComputedStyle(document.activeElement).outlineStyle")
    assert focused == "class" and style == "solid"
    labels = page.page.locator("#gen-form label").all()
    assert all(page.page.locator("#" + lab.get_attribute("for")).count() == 1 for lab in labels)


def test_the_live_chart_reads_the_stats_of_every_api_process(page, open_server):
    n = 12
    for i in range(n):  # fresh connections: the two API processes share the listening socket
        r = httpx.post(open_server.url + "/v1/generate", json={"steps": 3, "seed": i}, timeout=30)
        assert r.status_code == 200
    served = [pid for pid in api_pids(open_server) if (metrics_dir(pid) / f"histogram_{pid}.db").exists()]
    assert len(served) == 2, "both API processes should have served some of the requests"
    row = wait_for_row(page.page, "3", n)  # the page polls every 2 s
    assert 0 < float(row[2]) <= float(row[3]), row
    assert "3 steps: p50" in page.page.get_attribute("#chart", "aria-label")


def wait_for_row(page, steps: str, count: int, timeout: float = 20.0) -> list[str]:
    """The chart table's row for `steps` once it counts at least `count` requests."""
    end = time.monotonic() + timeout
    while True:
        rows = [r.locator("td").all_inner_texts() for r in page.locator("#stats-table tbody tr").all()]
        row = next((r for r in rows if r[0] == steps), None)
        if row is not None and int(row[1]) >= count:
            return row
        assert time.monotonic() < end, f"no chart row for {steps} steps with {count} requests: {rows}"
        page.wait_for_timeout(250)


def api_pids(server: ServerProcess) -> list[int]:
    return [pid for pid, cmd in children(server.proc.pid).items() if "-m server.api_process" in cmd]


def metrics_dir(pid: int) -> Path:
    env = dict(v.split("=", 1) for v in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in v)
    return Path(env["PROMETHEUS_MULTIPROC_DIR"])


# ---------------------------------------------------------------- with an API key


@pytest.fixture()
def key_page(browser, key_server):
    p = Page(browser, key_server.url)
    yield p
    p.close()


def test_without_the_key_the_page_says_so_and_with_it_works(key_page):
    page = key_page.page
    error = page.locator("#error")
    assert error.inner_text().startswith("401") and "API key" in error.inner_text()
    assert page.locator("#key-box").get_attribute("open") is not None
    assert page.evaluate("() => document.activeElement.id") == "api-key"
    page.fill("#api-key", "wrong")
    page.press("#api-key", "Enter")
    page.wait_for_selector("#key-status >> text=That key was refused.")
    page.fill("#api-key", KEY)
    page.press("#api-key", "Enter")
    page.wait_for_selector("#model option[value=gmm8]", state="attached")
    assert error.is_hidden()
    page.select_option("#model", "digits")
    page.fill("#count", "3")
    key_page.submit()
    page.wait_for_selector("#grid img >> nth=2")
    assert key_page.images("#grid") == [8] * 3
    generate = [r for r in key_page.requests if r.url.endswith("/v1/generate")]
    assert generate and all(r.headers.get("x-api-key") == KEY for r in generate)
    assert all(KEY not in r.url for r in key_page.requests) and KEY not in page.url
    # other than the refusals asked for above, nothing went wrong
    assert [e for e in key_page.errors if "status of 401" not in e] == []


def test_a_forgotten_key_fails_clearly_on_generate(key_page):
    page = key_page.page
    page.fill("#api-key", KEY)
    page.press("#api-key", "Enter")
    page.wait_for_selector("#model option[value=gmm8]", state="attached")
    page.click("#key-box summary")
    page.click("#forget-key")
    key_page.submit()
    assert re.match(r"401 .*missing or wrong API key", page.inner_text("#error"))
    assert page.evaluate("() => sessionStorage.getItem('flowmap-api-key')") is None


# ---------------------------------------------------------------- refusals: 429 and 503


@pytest.fixture(scope="module")
def slow_server(checkpoints):
    """One request at a time, 0.5 s a step, at most two outstanding: easy to fill."""
    args = ["--model", str(checkpoints["digits"]), "--api-workers", "1", "--max-steps", "4"]
    args += ["--max-queue-ms", "600000"]  # the count bound's 429 (the time bound's: test_shedding.py)
    s = ServerProcess([*args, "--max-batch-size", "1", "--max-queue", "1"], slow_ms=500).wait_ready()
    yield s
    s.stop()


def test_streamed_previews_show_while_the_request_runs(browser, slow_server, artifacts):
    p = Page(browser, slow_server.url)
    p.page.fill("#count", "2")
    p.page.select_option("#steps", "4")
    p.page.check("#stream")
    p.page.click("#gen-form button[value=generate]")
    p.page.wait_for_selector(
        '#grid[data-step="1"] img'
    )  # step 1 of 4 (0.5 s a step): the result is 1.5 s away
    assert p.page.get_attribute("#samples", "aria-busy") == "true"
    assert p.page.inner_text("#summary").startswith("Step 1 of 4: the jump to data")
    p.page.screenshot(path=str(artifacts / "playground-preview.png"), full_page=True)
    p.page.wait_for_selector("#gen-form button[value=generate]:enabled")
    assert p.page.get_attribute("#grid", "data-previews").split() == ["1", "2", "3", "4"]
    assert p.images("#grid") == [8, 8] and p.errors == []
    p.close()


def test_a_full_queue_shows_429_with_its_retry_after(browser, slow_server):
    p = Page(browser, slow_server.url)
    with ThreadPoolExecutor(3) as pool:
        body = {"steps": 4, "num_samples": 1}
        busy = [
            pool.submit(httpx.post, slow_server.url + "/v1/generate", json=body, timeout=60) for _ in range(3)
        ]
        # the first answer is the third request's 429: two are outstanding (for 2 s or more)
        done, _ = wait(busy, timeout=30, return_when=FIRST_COMPLETED)
        assert [f.result().status_code for f in done] == [429]
        p.page.fill("#count", "1")
        p.submit()
        statuses = sorted(f.result().status_code for f in busy)
    assert p.page.inner_text("#error") == "429 Too Many Requests: queue full (retry after 1 s)"
    assert statuses == [200, 200, 429]
    p.close()


def test_an_engine_core_restarting_shows_503_with_the_servers_message(browser, slow_server):
    p = Page(browser, slow_server.url)
    (core,) = [pid for pid, cmd in children(slow_server.proc.pid).items() if "-m server.core_process" in cmd]
    os.kill(core, signal.SIGSTOP)  # held, then killed: the page asks while it is down
    os.kill(core, signal.SIGKILL)
    end = time.monotonic() + 10
    while httpx.get(slow_server.url + "/readyz").status_code != 503:
        assert time.monotonic() < end, "readiness never failed"
        time.sleep(0.05)
    p.page.fill("#count", "1")
    p.submit()
    assert re.match(r"503 Service Unavailable: .*engine core", p.page.inner_text("#error")), (
        p.page.inner_text("#error")
    )
    p.close()


def children(pid: int) -> dict[int, str]:
    out = {}
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out[int(d.name)] = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError, IndexError):
            continue
    return out
