"""A real browser (Debian's Chromium, driven by Playwright) takes the "Test yourself" tab: a deck
answered case by case at 1400 and 390 px, the keyboard, a code shared by a room, the answers' CSV,
and nothing left on the server after a download and SIGTERM."""
import csv
import io
import re
import signal
import time
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest

from conftest import CHROMIUM, CHROMIUM_ARGS, REPO, AppServer, require_chromium

require_chromium()

HELDOUT = pd.read_csv(REPO / "train" / "splits" / "ham10000_heldout.csv").set_index("image_id")["dx"].to_dict()
ARTIFACTS = REPO / "test-artifacts"


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@contextmanager
def reader_page(browser, url: str, width: int, height: int = 1000, **options):
    """A fresh page of the app at this width, on the "Test yourself" tab; closed afterwards."""
    context = browser.new_context(viewport={"width": width, "height": height}, **options)
    page = context.new_page()
    try:
        page.goto(url, wait_until="load")
        page.wait_for_selector("#analyze", timeout=60_000)
        page.get_by_role("tab", name="Test yourself").click()
        page.wait_for_selector("#reader_start", state="visible", timeout=30_000)
        yield page
    finally:
        context.close()


def start(page, code: str = "") -> str:
    """Starts the deck of code (blank: a new one); returns the code the page shows."""
    page.locator("#reader_code input").fill(code)
    page.locator("#reader_start").click()
    page.wait_for_selector("#reader_image img", timeout=30_000)
    page.wait_for_function("document.querySelector('#reader_code input').value.length >= 3", timeout=10_000)
    return page.locator("#reader_code input").input_value()


def text(page, selector: str) -> str:
    return page.locator(selector).inner_text()


def reveal(page) -> tuple[str, str]:
    """Reveal, then (the diagnosis code, the image id) the truth names."""
    page.locator("#reader_reveal").click()
    page.wait_for_function("document.querySelector('#reader_truth').innerText.includes('Confirmed diagnosis')",
                           timeout=90_000)
    truth = text(page, "#reader_truth")
    dx = re.search(r"Confirmed diagnosis: [^\n]*\((\w+)\)", truth).group(1)
    return dx, re.search(r"ISIC_\d{7}", truth).group(0)


def go_on(page, done: int) -> None:
    page.locator("#reader_next").click()
    page.wait_for_function(f"document.querySelector('#reader_score').innerText.includes('Cases done: {done} of')",
                           timeout=30_000)


@pytest.mark.parametrize("width", [1400, 390])
def test_three_cases_answered_and_scored_each_truth_ham10000s(browser, app_server, width):
    with reader_page(browser, app_server.url, width) as page:
        assert "Confirmed" not in text(page, "#reader") and not page.locator("#reader_models").is_visible()
        code = start(page)
        assert re.fullmatch(r"[A-Z2-9]{5}", code) and f"Deck {code}" in text(page, "#reader_progress")
        shown = []
        for k in range(1, 4):
            assert f"case {k} of 20" in text(page, "#reader_progress")
            # Before the reveal nothing names the truth: no diagnosis line, no image id, no models.
            tab = text(page, "#reader")
            assert "Confirmed" not in tab and not re.search(r"ISIC_\d{7}", tab)
            assert page.locator("#reader_image img").get_attribute("alt") == f"Case {k} of 20"
            page.locator("#reader_answer label").nth(k).click()
            dx, image_id = reveal(page)
            assert image_id in HELDOUT, f"{image_id} is not in the held-out slice"
            assert dx == HELDOUT[image_id], (image_id, dx, HELDOUT[image_id])
            for cam in ("#reader_fusion_cam img", "#reader_image_only_cam img"):
                assert page.locator(cam).evaluate("i => i.complete && i.naturalWidth > 100")
            assert "(" in text(page, "#reader_fusion_probs") and "(" in text(page, "#reader_image_only_probs")
            assert "Similar confirmed cases' vote" in text(page, "#reader_similar")
            if k == 1:
                page.locator("#reader_truth").scroll_into_view_if_needed()
                page.screenshot(path=f"/tmp/reader_{width}_revealed.png", full_page=True)
            shown.append(image_id)
            go_on(page, k)
        assert len(set(shown)) == 3
        score = text(page, "#reader_score")
        assert "Cases done: 3 of 20" in score
        for row in ("You, before the models", "You, after the models", "Fusion model", "Image-only model"):
            assert re.search(re.escape(row) + r"\s+\d/3 \(\d+%\)\s+\d\.\d\d", score), (row, score)
        assert "for the better" in score and "for the worse" in score
        assert page.evaluate("document.documentElement.scrollWidth") <= width + 1
        page.screenshot(path=f"/tmp/reader_{width}.png", full_page=True)
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"reader_{width}.png"), full_page=True)


def test_a_room_follows_one_code_and_the_keyboard_answers(browser, app_server):
    with reader_page(browser, app_server.url, 1400) as a, reader_page(browser, app_server.url, 1400) as b:
        start(a, "k7m2q")
        start(b, "K7M2Q")
        first = a.locator("#reader_image img").get_attribute("src")
        assert first == b.locator("#reader_image img").get_attribute("src")
        # Keys: 3 picks the third diagnosis, Y excise; R reveals; 1 revises to the first; → goes on.
        a.locator("#reader_progress").click()
        a.keyboard.press("3")
        a.wait_for_function("document.querySelectorAll('#reader_answer input')[2].checked", timeout=10_000)
        a.keyboard.press("y")
        a.wait_for_function("document.querySelectorAll('#reader_excise input')[0].checked", timeout=10_000)
        a.keyboard.press("r")
        a.wait_for_function("document.querySelector('#reader_truth').innerText.includes('Confirmed diagnosis')",
                            timeout=90_000)
        assert "Benign keratosis (bkl)" in text(a, "#reader_truth").split("Your answer:")[1].split("\n")[0]
        a.locator("#reader_progress").click()
        a.keyboard.press("1")
        a.wait_for_function("document.querySelectorAll('#reader_revision input')[0].checked", timeout=10_000)
        a.keyboard.press("ArrowRight")
        a.wait_for_function("document.querySelector('#reader_score').innerText.includes('Cases done: 1 of 20')",
                            timeout=30_000)
        assert "case 2 of 20" in text(a, "#reader_progress")
        assert a.locator("#reader_image img").get_attribute("src") != first
        # Typing a code is not answering.
        a.locator("#reader_code input").fill("")
        a.locator("#reader_code input").type("ab3")
        assert not a.evaluate("[...document.querySelectorAll('#reader_answer input')].some(i => i.checked)")


def held_csvs(root: Path) -> list[Path]:
    return sorted(root.rglob("*.csv"))


def answer_one_case(page) -> str:
    page.locator("#reader_answer label").nth(4).click()
    _, image_id = reveal(page)
    go_on(page, 1)
    return image_id


def test_the_answers_download_as_csv_and_leave_nothing_behind(browser, app_server, tmp_path):
    with reader_page(browser, app_server.url, 1400, accept_downloads=True) as page:
        page.locator("#reader_csv").click()
        page.get_by_text("No answers yet").first.wait_for(timeout=30_000)
        code = start(page, "K7M2Q")
        image_id = answer_one_case(page)
        with page.expect_download(timeout=60_000) as info:
            page.locator("#reader_csv").click()
        download = info.value
        assert re.fullmatch(r"reader_answers_K7M2Q_\d{8}-\d{6}\.csv", download.suggested_filename)
        path = tmp_path / download.suggested_filename
        download.save_as(path)
        [row] = list(csv.DictReader(io.StringIO(path.read_text())))
        assert row["deck_code"] == code and row["image_id"] == image_id and row["answer_before"] == "mel"
        assert row["confirmed_dx"] == HELDOUT[image_id] and row["answer_after"] == "mel"
        path.unlink()
        page.wait_for_timeout(500)
        assert held_csvs(app_server.temp_dir) == []


def test_nothing_is_left_in_the_temp_folder_after_a_csv_download_and_sigterm(browser, tmp_path):
    host = tmp_path / "host"
    host.mkdir()
    app = AppServer({"LESION_UPLOAD_TTL_S": "600"}, tmpdir=host)
    code = None
    try:
        with reader_page(browser, app.url, 1400, accept_downloads=True) as page:
            start(page)
            answer_one_case(page)
            with page.expect_download(timeout=60_000) as info:
                page.locator("#reader_csv").click()
            info.value.save_as(tmp_path / "answers.csv")
            assert (tmp_path / "answers.csv").read_text().startswith("deck_code,")
            # A second one is never fetched (the page's download link does nothing), so the server
            # still holds it when the app is stopped.
            page.evaluate("HTMLAnchorElement.prototype.click = function () {}")
            page.locator("#reader_csv").click()
            deadline = time.time() + 30
            while not held_csvs(host) and time.time() < deadline:
                page.wait_for_timeout(200)
            assert len(held_csvs(host)) == 1
            code = app.stop(signal.SIGTERM)
    finally:
        if code is None:
            app.stop()
    assert code == 0, app.output[-2000:]
    # No file at all, and no folder but the empty one importing timm makes at every start (torch's
    # inductor cache, torchinductor_<user>), which holds nothing of a session.
    assert [p for p in host.rglob("*") if not p.is_dir()] == [], "the app left files in the temp folder"
    assert [p.name for p in host.iterdir() if not p.name.startswith("torchinductor_")] == []
