"""The labeling widget in a real browser: JupyterLab driven by Debian's headless Chromium.

The test starts JupyterLab on 127.0.0.1 (its own port, token, config, data, runtime, settings and
workspace folders, all temporary), opens ``tests/browser/label_widget.ipynb`` with Playwright,
runs all its cells, then clicks the widget's buttons the way a learner does:

    A better (pair 1), Undo, Tie (pair 1 again), B better (pair 2), Both bad (pair 3)

After each click the clicked button loses its focus (no outline on the next pair). Then, with the
mouse off the widget, the keys line says the keys are off; with the mouse back over it, that they
are on, and the test presses ``s`` (skip pair 4). It checks the store file that the *kernel*
wrote: six events in that order, the undo an event of its own naming the label it undoes,
labeler "you", and each label's left/right exactly the completions the browser showed on each
side, with ``swapped`` mapping them back to the pair's order (the notebook saves the pairs next
to the store; the test reads what was on screen).

Labels given after "Run All" count: the notebook's last cell, run by "Run All" before any click,
reads what the next stage trains on (``taste.training_labels``) and reports none of yours; after
the clicks, the next stage's read (here, in the test's own process, as lesson 2's kernel would)
reports the three labels in force as yours and the stand-in's label for the fourth pair.

The server's root is laid out as ``make course`` serves the repository (``notebooks/`` and
``img/`` side by side): the test then opens lesson 0 (without running it) and checks that its
first diagram, ``../img/...png`` in a markdown cell, loaded (``naturalWidth`` > 0).

Needs /usr/bin/chromium (``apt-get install -y chromium``) and the ``playwright`` package (its own
browser download is not used). Without them the test is skipped, unless the environment
variable CI is set: there it fails, because CI must run it. Run alone with
``python -m pytest -m browser tests/test_browser.py``.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
NOTEBOOK = "label_widget.ipynb"
LESSON_0 = "notebooks/00_why_rlhf.ipynb"  # where `make course` serves it: the repository root
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
VISIBLE_NOTEBOOK = ".jp-NotebookPanel:not(.lm-mod-hidden)"
TIMEOUT_MS = 45_000  # per step; the whole test takes ~35 s on 2 cores under load 10, most of it
                     # the kernel importing rlhf_lite (torch, transformers)

# (button, the choice it records or None for Undo, index of the pair on screen when it is clicked)
CLICKS = [("A better", "A", 0), ("Undo", None, 1), ("Tie", "tie", 0), ("B better", "B", 1),
          ("Both bad", "both_bad", 2)]


def _require(ok: bool, reason: str) -> None:
    if ok:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI is set, and CI must run the browser test "
                    "(.ci/run: apt-get update && apt-get install -y chromium)")
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def jupyter_lab(root: Path, home: Path, env: dict):
    """A JupyterLab server serving ``root``, everything it reads or writes under ``home``;
    yields its base URL and token. SIGTERM at the end (it shuts its kernels down)."""
    port, token = _free_port(), secrets.token_hex(16)
    config, settings = home / "config", home / "settings"
    notification = (settings / "@jupyterlab" / "apputils-extension"
                    / "notification.jupyterlab-settings")
    notification.parent.mkdir(parents=True)
    notification.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    # render every cell: the default windowing leaves cells out of view unrendered (not "visible")
    tracker = settings / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings"
    tracker.parent.mkdir(parents=True)
    tracker.write_text(json.dumps({"windowingMode": "none"}))
    config.mkdir()
    (config / "jupyter_server_config.json").write_text(json.dumps(
        {"LabApp": {"news_url": None,
                    "check_for_updates_class": "jupyterlab.NeverCheckForUpdate"}}))
    env = {**os.environ, **env, "JUPYTER_CONFIG_DIR": str(config),
           "JUPYTER_DATA_DIR": str(home / "data"), "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
           "IPYTHONDIR": str(home / "ipython"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root",
           "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
           f"--LabApp.user_settings_dir={settings}",
           f"--LabApp.workspaces_dir={home / 'workspaces'}",
           "--LabApp.expose_app_in_browser=True"]
    log = open(home / "server.log", "wb")
    server = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=root)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    why = ("no answer in 30 s" if server.poll() is None
                           else f"exit code {server.returncode}")
                    raise RuntimeError(f"JupyterLab did not start ({why}); its log, "
                                       f"{home / 'server.log'}, ends:\n"
                                       f"{_tail(home / 'server.log')}") from None
                time.sleep(0.2)
        yield url, token
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def _tail(path: Path, n: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def _wait(condition, what: str, timeout: float = TIMEOUT_MS / 1000):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout:.0f} s for {what}")
        time.sleep(0.05)


def _events(store: Path) -> list[dict]:
    if not store.exists():
        return []
    return [json.loads(line) for line in store.read_text(encoding="utf-8").splitlines()
            if line.strip()]


def _drive(page, url: str, token: str, store: Path, pairs_file: Path, phases: dict):
    """Open the notebook, run all, click through CLICKS. Before each click, wait until the pair
    CLICKS names is on screen and note which completion the browser draws on the left (the smaller
    x: what the learner sees, whatever the widget's markup); after it, wait until the kernel has
    written the event to the store. Returns what was on screen at each click, and what the
    notebook's last cell (the next stage's read) printed at "Run All"."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    page.set_default_timeout(TIMEOUT_MS)
    page.goto(f"{url}/lab/tree/{NOTEBOOK}?reset&token={token}")
    page.get_by_text("(ipykernel) | Idle").first.wait_for()
    page.wait_for_function("window.jupyterapp && window.jupyterapp.shell.currentWidget")
    phases["open notebook, kernel idle"] = time.monotonic()
    page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
    notebook = page.locator(VISIBLE_NOTEBOOK)
    buttons = {name: notebook.get_by_role("button", name=name, exact=True)
               .and_(page.locator(".widget-button")) for name, *_ in CLICKS}
    traceback = notebook.locator(".jp-OutputArea-output",
                                 has_text="Traceback (most recent call last)")
    buttons["A better"].or_(traceback).first.wait_for(state="visible")
    if traceback.count():
        raise AssertionError(f"a cell of {NOTEBOOK} failed:\n{traceback.first.inner_text()}")
    for button in buttons.values():
        button.wait_for(state="visible")
    next_stage = notebook.locator(".jp-OutputArea-output", has_text="are yours")
    next_stage.or_(traceback).first.wait_for(state="visible")
    if traceback.count():
        raise AssertionError(f"a cell of {NOTEBOOK} failed:\n{traceback.first.inner_text()}")
    report = next_stage.first.inner_text().strip()
    phases["run all, widget shown"] = time.monotonic()
    widget = notebook.locator(".jp-OutputArea-output", has=page.locator(".widget-button"))
    pairs = json.loads(pairs_file.read_text())
    shown = []
    for n, (name, choice, index) in enumerate(CLICKS, 1):
        prompt, first, second = pairs[index]
        x = [widget.get_by_text(text, exact=True).bounding_box()["x"] for text in (first, second)]
        if abs(x[0] - x[1]) < 10:
            raise AssertionError(f"the two completions of pair {index + 1} are not side by side "
                                 f"(x = {x})")
        left, right = (first, second) if x[0] < x[1] else (second, first)
        shown.append(dict(button=name, choice=choice, index=index, left=left, right=right))
        buttons[name].click()
        _wait(lambda: store.exists() and store.read_bytes().count(b"\n") >= n,
              f"event {n} (after clicking {name!r}) in {store}")
        # the kernel blurs the clicked button once the answer is saved: no outline on the next pair
        try:
            page.wait_for_function(FOCUS_LEFT_BUTTONS, timeout=10_000)
        except PlaywrightTimeout:
            raise AssertionError(f"{name!r} kept the focus 10 s after its answer was saved: its "
                                 "outline makes the next pair look pre-selected") from None
    phases["5 clicks, 5 events on disk"] = time.monotonic()

    # the keys line says whether the keys work: on with the mouse over the widget, off elsewhere
    keys_on, keys_off = widget.locator(".rlhf-keys-on"), widget.locator(".rlhf-keys-off")
    keys_on.wait_for(state="visible")
    assert keys_off.is_hidden(), "with the mouse over the widget, the keys line says keys off"
    page.mouse.move(2, 2)
    keys_off.wait_for(state="visible")
    assert keys_on.is_hidden(), "with the mouse off the widget, the keys line says keys on"
    widget.locator(".widget-html").first.hover()
    keys_on.wait_for(state="visible")
    page.keyboard.press("s")  # skip pair 4: the keys still work after the clicked button's blur
    _wait(lambda: store.read_bytes().count(b"\n") >= len(CLICKS) + 1,
          f"the skip event after pressing 's' over the widget, in {store}")
    phases["keys off/on, 's' pressed, skip on disk"] = time.monotonic()
    return shown, report


def _first_diagram(page) -> dict:
    """Open lesson 0 (no cell run) and wait until the first image in its rendered markdown has
    its URL resolved by JupyterLab and has loaded or failed; returns its src and naturalWidth."""
    page.evaluate("path => { window.jupyterapp.commands.execute('docmanager:open', {path}); }",
                  LESSON_0)  # not awaited: the command resolves only once its kernel has started
    image = page.locator(f"{VISIBLE_NOTEBOOK} .jp-RenderedMarkdown img").first
    image.wait_for(state="attached")
    handle = image.element_handle()
    page.wait_for_function("img => img.src.includes('/files/') && img.complete", arg=handle,
                           timeout=15_000)
    return handle.evaluate("img => ({src: img.getAttribute('src'), alt: img.alt, "
                           "naturalWidth: img.naturalWidth})")


FOCUS_LEFT_BUTTONS = "!document.activeElement?.classList.contains('widget-button')"


def test_label_widget_in_jupyterlab(tmp_path):
    _require(os.path.exists(CHROMIUM), f"{CHROMIUM} is missing (apt-get install -y chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _require(False, "the playwright package is missing (pip install playwright)")
    root, store, pairs_file = tmp_path / "root", tmp_path / "labels.jsonl", tmp_path / "pairs.json"
    root.mkdir()
    shutil.copy(HERE / "browser" / NOTEBOOK, root)
    (root / "notebooks").mkdir()
    shutil.copy(REPO / LESSON_0, root / LESSON_0)
    shutil.copytree(REPO / "img", root / "img")
    screenshot = tmp_path / "screenshot.png"
    phases = {"start": time.monotonic()}
    start = datetime.datetime.now(datetime.timezone.utc)
    with jupyter_lab(root, tmp_path, {"RLHF_LITE_TEST_STORE": str(store)}) as (url, token), \
            sync_playwright() as playwright:
        phases["server up"] = time.monotonic()
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            try:
                shown, run_all_report = _drive(page, url, token, store, pairs_file, phases)
                page.screenshot(path=str(screenshot))  # the last state, for an assertion below
                diagram = _first_diagram(page)
                phases["lesson 0 opened, its first diagram loaded"] = time.monotonic()
            except Exception as error:
                try:
                    page.screenshot(path=str(screenshot), full_page=True)
                except Exception as why:  # a crashed page: keep the first error
                    screenshot = f"none ({why})"
                raise AssertionError(f"driving JupyterLab failed: {error}\n"
                                     f"screenshot: {screenshot}\n"
                                     f"server log: {tmp_path / 'server.log'}") from error
        finally:
            browser.close()
    end = datetime.datetime.now(datetime.timezone.utc)
    phases["browser closed, server stopped"] = time.monotonic()
    times = list(phases.values())
    print(", ".join(f"{name}: {b - a:.1f} s"
                    for name, a, b in zip(list(phases)[1:], times, times[1:])))
    assert diagram["naturalWidth"] > 0, ("lesson 0's first diagram did not load in JupyterLab "
                                         f"served as `make course` serves it: {diagram}")

    pairs = [tuple(p) for p in json.loads(pairs_file.read_text())]
    events = _events(store)
    where = f"\nscreenshot: {screenshot}\nstore {store}:\n" + "\n".join(map(json.dumps, events))
    assert [e["event"] for e in events] == ["label", "undo", "label", "label", "label", "skip"], \
        where
    assert [e["id"] for e in events] == [1, 2, 3, 4, 5, 6], where
    assert events[5]["prompt"] == pairs[3][0], f"'s' skips the fourth pair{where}"
    assert events[1]["undoes"] == events[0]["id"], f"the undo names the label it undoes{where}"
    for event in events:
        assert event["labeler"] == "you" and not event.get("simulated"), where
        assert start <= datetime.datetime.fromisoformat(event["time"]) <= end, where

    labels = [e for e in events if e["event"] == "label"]
    clicked = [s for s in shown if s["choice"] is not None]
    assert [e["choice"] for e in labels] == [s["choice"] for s in clicked], where
    for event, screen in zip(labels, clicked):
        prompt, first, second = pairs[screen["index"]]
        # the record holds what the browser drew on each side, and `swapped` maps it back
        assert (event["prompt"], event["left"], event["right"]) == \
            (prompt, screen["left"], screen["right"]), f"on screen: {screen}{where}"
        assert event["swapped"] == (screen["left"] == second), \
            f"pair {pairs[screen['index']]}{where}"
        assert event["criteria"] == "helpful", where
    assert {e["swapped"] for e in labels} == {True, False}, \
        f"the notebook should show one pair swapped and one not, to check both mappings{where}"
    assert shown[2]["left"] == shown[0]["left"], \
        f"after Undo the pair comes back on the same sides{where}"

    # what the next lessons read: one label in force per pair, chosen = the side that was clicked
    from rlhf_lite.label_store import LabelStore

    expect = [(s["left"], s["right"]) if s["choice"] != "B" else (s["right"], s["left"])
              for s in clicked[1:]]
    got = [(c.prompt, c.chosen, c.rejected, c.tie, c.both_bad)
           for c in LabelStore(store).comparisons()]
    assert got == [(pairs[s["index"]][0], *chosen_rejected, s["choice"] == "tie",
                    s["choice"] == "both_bad")
                   for s, chosen_rejected in zip(clicked[1:], expect)], where

    # labels given after "Run All" count: at Run All the next stage found none of yours; now it
    # reads the three in force as yours, and a stand-in labels the fourth pair
    from rlhf_lite.taste import training_labels
    from rlhf_lite.world import World

    assert run_all_report.startswith("4 comparisons: 0 are yours, 4 the stand-in's"), run_all_report
    next_stage = training_labels(store, World(), pairs)
    assert (next_stage.yours, next_stage.stand_in) == (3, 1), f"{next_stage}{where}"
    read = [(c.prompt, c.chosen, c.rejected, c.tie, c.both_bad) for c in next_stage.comparisons]
    assert read[:3] == got, where
    assert [c.labeler for c in next_stage.comparisons] == ["you"] * 3 + ["stand-in"]
