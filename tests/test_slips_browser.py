"""A real browser (Debian's Chromium, driven by Playwright) makes the slips a user makes on both tabs,
at 1400 and 390 px: each gets one plain warning and no "Error" badge, the right next action then works,
and what the user had (their analysis, their choices, their deck and place) is kept. Then an axe audit
(axe-core through axe-playwright-python) of both tabs in use finds no serious or critical violation."""
import re
import time
from pathlib import Path

import pytest

from conftest import CHROMIUM, CHROMIUM_ARGS, EXAMPLES, REPO, require_chromium

require_chromium()

SHOTS = REPO / "test-artifacts" / "slips"   # a few warning states, for a person to look at
# Every visible "Error" badge (Gradio's status tracker marks each output of an event that raised
# gr.Error with <span class="error">Error</span>) or error toast.
ERROR_BADGES = """() => [...document.querySelectorAll('.error, [class*="error"]')]
  .filter(e => e.getClientRects().length > 0 && (e.textContent || '').trim() === 'Error').length"""
# Gradio's marks of an event in flight: outputs at low opacity, a translucent or progress overlay.
BUSY = "() => !!document.querySelector('.pending, .wrap.translucent:not(.hide), .wrap.generating:not(.hide)')"


@pytest.fixture(scope="module")
def browser(app_server):
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def opened(browser, url: str, width: int):
    context = browser.new_context(viewport={"width": width, "height": 1000})
    page = context.new_page()
    page.goto(url, wait_until="load")
    page.wait_for_selector("#analyze", timeout=60_000)
    return context, page


def settled(page) -> None:
    """Waits until no event is in flight and the outputs' fade-in is over."""
    page.wait_for_function(f"!({BUSY})()", timeout=90_000)
    page.wait_for_timeout(400)


def text(page, selector: str) -> str:
    return page.locator(selector).inner_text()


class Slips:
    """One page's slips, each checked (its message shown, no "Error" badge) and counted."""

    def __init__(self, page, width: int):
        self.page, self.width, self.seen = page, width, []

    def warned(self, message: str, shot: str | None = None) -> None:
        """The slip's message is shown in a visible warning toast, and no "Error" badge anywhere."""
        page = self.page
        page.locator("[data-testid=toast-text]").filter(has_text=message).first.wait_for(state="visible",
                                                                                          timeout=30_000)
        page.wait_for_timeout(300)   # the event's outputs are drawn with its toast
        assert page.evaluate(ERROR_BADGES) == 0, f"{page.evaluate(ERROR_BADGES)} Error badges after: {message}"
        settled(page)
        self.seen.append(("toast", message))
        if shot:
            SHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SHOTS / f"{shot}_{self.width}.png"))

    def noted(self, selector: str, message: str) -> None:
        """A slip shown as an inline note (no toast) in `selector`."""
        self.page.wait_for_function("([s, m]) => document.querySelector(s).innerText.includes(m)",
                                    arg=[selector, message], timeout=30_000)
        settled(self.page)
        assert self.page.evaluate(ERROR_BADGES) == 0, f"an Error badge after: {message}"
        self.seen.append(("inline", message))

    def close_toasts(self) -> None:
        """Closes the toasts (each x), so that the next slip's toast is its own."""
        self.page.wait_for_function("""() => {
          document.querySelectorAll('[data-testid=toast-close]').forEach(b => b.click());
          return !document.querySelector('[data-testid=toast-text]');
        }""", timeout=10_000, polling=200)


def upload(page, path: Path) -> None:
    page.set_input_files("#lesion_image input[type=file]", str(path))
    page.wait_for_function("document.querySelector('#reading').innerText.includes('New image')", timeout=30_000)


def further(page, paths: list[Path], names: int) -> None:
    """Adds further images (to those already there); `names`: how many the list then shows."""
    page.set_input_files("#extra_images input[type=file]", [str(p) for p in paths])
    page.wait_for_function("(n) => document.querySelectorAll('#extra_images tbody tr').length === n", arg=names,
                           timeout=30_000)
    settled(page)


def remove_further(page, name: str, left: int) -> None:
    """Removes one further image by its row's x, as a person does."""
    page.locator("#extra_images tbody tr").filter(has_text=name).get_by_role("button", name="Remove this file").click()
    page.wait_for_function("(n) => document.querySelectorAll('#extra_images tbody tr').length === n", arg=left,
                           timeout=30_000)
    page.wait_for_function("document.querySelector('#reading').innerText.includes('New image')", timeout=30_000)
    settled(page)


def type_age(page, age: str) -> None:
    """Types the age as a person does (the live what-if listens to keystrokes, not to a filled value)."""
    page.locator("#age input").fill("")
    page.locator("#age input").press_sequentially(age, delay=30)


def analysed(page, until: str) -> None:
    page.wait_for_function("(u) => document.querySelector('#reading').innerText.includes(u)", arg=until,
                           timeout=90_000)
    settled(page)


def patient_images(folder: Path) -> dict[str, Path]:
    """A patient's image and four more views of it (not bundled examples: each file is deleted once
    the app reads it), and two files the app cannot read."""
    from PIL import Image
    from inputs import bad_files
    im = Image.open(EXAMPLES / "images" / "ISIC_0024394.jpg").transpose(Image.Transpose.ROTATE_180)
    out = {"main": folder / "patient.png"}
    im.save(out["main"])
    for name, t in (("left", Image.Transpose.FLIP_LEFT_RIGHT), ("top", Image.Transpose.FLIP_TOP_BOTTOM),
                    ("turned", Image.Transpose.ROTATE_90), ("fourth", Image.Transpose.TRANSPOSE)):
        out[name] = folder / f"view_{name}.png"
        im.transpose(t).save(out[name])
    bad = bad_files(folder / "bad")
    out["document"] = bad["not_an_image"][0]
    out["truncated"] = folder / "truncated.jpg"
    out["truncated"].write_bytes(bad["truncated_jpeg"][0].read_bytes())
    return out


def analysis_tab_slips(s: Slips, files: dict[str, Path]) -> None:
    page = s.page
    # 1. Analyze with no image.
    page.locator("#analyze").click()
    s.warned("Please upload a dermoscopic image first.", "no_image")
    # 2-3. A heatmap class, then a method, before any image: said, and the choices stay as chosen.
    page.locator("#cam_class input").click()
    page.get_by_role("option", name="Melanoma (mel)").click()
    s.warned("No image yet: upload one and press Analyze")
    s.close_toasts()
    page.locator("#cam_method").get_by_text("Grad-CAM++", exact=True).click()
    s.warned("No image yet: upload one and press Analyze")
    assert page.locator("#cam_class input").input_value() == "Melanoma (mel)"
    assert page.evaluate("[...document.querySelectorAll('#cam_method input')].find(i => i.checked)"
                         ".closest('label').innerText.trim()") == "Grad-CAM++"
    # 4. The case report before any analysis.
    page.locator("#case_report").click()
    s.warned("Analyze an image first: the case report describes the current analysis.")
    s.close_toasts()
    # 5. A file that is not an image; then the right next action: another upload, Analyze.
    upload(page, files["document"])
    page.locator("#analyze").click()
    s.warned("The file is not an image this app can read", "unreadable_file")
    upload(page, files["main"])
    page.locator("#analyze").click()
    analysed(page, "agree")
    s.close_toasts()
    # The class and method chosen before any image are the ones used.
    assert text(page, "#fusion_cam_note").startswith("Grad-CAM++ for Melanoma (mel)"), text(page, "#fusion_cam_note")

    def shown():
        return text(page, "#reading"), text(page, "#fusion_probs"), page.locator("#fusion_cam img").first.get_attribute("src")
    analysis = shown()
    # 6. Age typed as "abc": the live what-if notes it inline, Analyze warns; the analysis stays.
    type_age(page, "abc")
    s.noted("#warnings", "Age must be a number of years, got 'abc'. The results below are for the last valid entry.")
    assert shown() == analysis
    page.locator("#analyze").click()
    s.warned("Age must be a number of years, got 'abc'.", "age_not_a_number")
    assert shown() == analysis
    # 7. An age out of range (typing it, "3" and "30" were valid ages: the what-if showed them, as it
    # should); Analyze warns and changes nothing. Then a valid age updates the same analysis.
    type_age(page, "300")
    s.noted("#warnings", "Age must be between 0 and 120 years, got 300.")
    settled(page)
    analysis = shown()
    page.locator("#analyze").click()
    s.warned("Age must be between 0 and 120 years, got 300.")
    assert shown() == analysis
    type_age(page, "64")
    page.locator("#analyze").click()
    page.wait_for_function("!document.querySelector('#warnings').innerText.includes('Age must')", timeout=60_000)
    settled(page)
    assert re.search(r"\bage \d", text(page, "#subgroup")), text(page, "#subgroup")   # the age's group now
    assert text(page, "#fusion_cam_note").startswith("Grad-CAM++")
    s.close_toasts()
    # 8. A further image that cannot be read. Removing it, Analyze works on the other two: the first
    # image's file and the readable further image's went as soon as they were read (kept in memory).
    further(page, [files["left"], files["truncated"]], 2)
    page.locator("#analyze").click()
    s.warned("truncated.jpg (further image 2): The image file is damaged or truncated and cannot be read.",
             "unreadable_further_image")
    remove_further(page, "truncated", 1)
    page.locator("#analyze").click()
    analysed(page, "From 2 images of this lesion")
    s.close_toasts()
    # 9. Too many further images: removing one, Analyze works on the four.
    further(page, [files["top"], files["turned"], files["fourth"]], 4)
    page.locator("#analyze").click()
    s.warned("At most 3 more images of the same lesion (4 in all); 4 were given.")
    remove_further(page, "view_fourth", 3)
    page.locator("#analyze").click()
    analysed(page, "From 4 images of this lesion")
    assert page.locator("#fusion_cam .cam_strip img").count() == 4
    assert "no longer available" not in text(page, "body")
    s.close_toasts()


def reader_tab_slips(s: Slips) -> None:
    page = s.page
    page.get_by_role("tab", name="Test yourself").click()
    page.wait_for_selector("#reader_start", state="visible", timeout=30_000)
    code = page.locator("#reader_code input")
    # 10. The answers' CSV before any answer.
    page.locator("#reader_csv").click()
    s.warned("No answers yet: finish a case (choose, reveal, Next case) first.")
    # 11. A malformed deck code: said, the typed code stays to be corrected, and nothing starts.
    code.fill("my deck!")
    page.locator("#reader_start").click()
    s.warned("A deck code is 3 to 12 letters and digits", "bad_deck_code")
    assert code.input_value() == "my deck!" and not page.locator("#reader_image img").count()
    code.fill("K7M2Q")
    page.locator("#reader_start").click()
    page.wait_for_selector("#reader_image img", timeout=30_000)
    settled(page)
    s.close_toasts()
    assert "Deck K7M2Q · case 1 of 20" in text(page, "#reader_progress")
    # 12. Reveal before choosing: said; the choices still take a click (no badge overlay), then Reveal works.
    page.locator("#reader_reveal").click()
    s.warned("Choose a diagnosis first; then reveal.", "reveal_before_choosing")
    assert "case 1 of 20" in text(page, "#reader_progress")
    page.locator("#reader_answer label").nth(4).click()
    page.locator("#reader_reveal").click()
    page.wait_for_function("document.querySelector('#reader_truth').innerText.includes('Confirmed diagnosis')",
                           timeout=90_000)
    settled(page)
    page.locator("#reader_next").click()
    page.wait_for_function("document.querySelector('#reader_score').innerText.includes('Cases done: 1 of 20')",
                           timeout=30_000)
    settled(page)
    s.close_toasts()
    # 13. R before choosing, by keyboard: said; then the keys go on: 3 chooses, R reveals, → goes on.
    page.locator("#reader_progress").click()
    page.keyboard.press("r")
    s.warned("Choose a diagnosis first; then reveal.")
    # Every control of the tab is still reached with Tab (the toast takes no focus it keeps).
    code.focus()
    reached = set()
    for _ in range(40):
        page.keyboard.press("Tab")
        reached.add(page.evaluate("() => document.activeElement.closest('[id^=reader_]')?.id || ''"))
    assert {"reader_start", "reader_new", "reader_answer", "reader_excise", "reader_reveal", "reader_csv"} <= reached, \
        reached
    page.locator("#reader_progress").click()
    page.keyboard.press("3")
    page.wait_for_function("document.querySelectorAll('#reader_answer input')[2].checked", timeout=10_000)
    page.keyboard.press("r")
    page.wait_for_function("document.querySelector('#reader_truth').innerText.includes('Confirmed diagnosis')",
                           timeout=90_000)
    settled(page)
    page.locator("#reader_progress").click()
    page.keyboard.press("ArrowRight")
    page.wait_for_function("document.querySelector('#reader_score').innerText.includes('Cases done: 2 of 20')",
                           timeout=30_000)
    assert "case 3 of 20" in text(page, "#reader_progress") and "Deck K7M2Q" in text(page, "#reader_progress")
    s.close_toasts()
    # 14. → before Reveal does nothing (Next is not shown until the reveal): no badge, the place kept.
    page.locator("#reader_progress").click()
    page.keyboard.press("ArrowRight")
    page.wait_for_timeout(500)
    assert page.evaluate(ERROR_BADGES) == 0 and "case 3 of 20" in text(page, "#reader_progress")


@pytest.mark.parametrize("width", [1400, 390])
def test_each_slip_is_one_warning_and_the_next_action_works_with_the_state_kept(browser, app_server, tmp_path,
                                                                                 width):
    files = patient_images(tmp_path)
    context, page = opened(browser, app_server.url, width)
    try:
        t0 = time.time()
        s = Slips(page, width)
        analysis_tab_slips(s, files)
        reading = text(page, "#reading")
        reader_tab_slips(s)
        # The analysis is still on the Analysis tab after all that.
        page.get_by_role("tab", name="Analysis").click()
        assert text(page, "#reading") == reading and "From 4 images" in reading
        toasts = [m for kind, m in s.seen if kind == "toast"]
        assert len(toasts) >= 10 and any("then reveal" in m for m in toasts) and any("Age" in m for m in toasts), s.seen
        assert page.evaluate("document.documentElement.scrollWidth") <= width + 1
        print(f"{len(toasts)} warnings and {len(s.seen) - len(toasts)} inline notes at {width} px "
              f"in {time.time() - t0:.0f} s")
    finally:
        context.close()


# The impacts the bar allows none of, on either tab in use.
SERIOUS = {"serious", "critical"}


def audit(page) -> list[dict]:
    from axe_playwright_python.sync_playwright import Axe
    settled(page)
    return Axe().run(page).response["violations"]


def described(violations: list[dict]) -> list[str]:
    return [f"{v['id']} ({v['impact']}): {[n['target'] for n in v['nodes']][:5]}" for v in violations]


@pytest.mark.parametrize("width", [1400, 390])
def test_both_tabs_in_use_pass_an_axe_audit(browser, app_server, width):
    """After an analysis, and after a reveal in Test yourself. (Not audited: a toast, whose header
    Gradio marks up as a button holding its close button, axe's serious nested-interactive; and the
    empty result panels of a fresh page, Gradio's aria-label on a plain div, aria-prohibited-attr.)"""
    context, page = opened(browser, app_server.url, width)
    try:
        page.get_by_text("Melanoma (mel) ·").click()       # an example: one click analyses it
        analysed(page, "agree")
        page.wait_for_selector("#shap_plot .js-plotly-plot .main-svg", timeout=30_000)
        analysis = audit(page)
        page.get_by_role("tab", name="Test yourself").click()
        page.locator("#reader_start").click()
        page.wait_for_selector("#reader_image img", timeout=30_000)
        page.locator("#reader_answer label").nth(2).click()
        page.locator("#reader_reveal").click()
        page.wait_for_function("document.querySelector('#reader_truth').innerText.includes('Confirmed diagnosis')",
                               timeout=90_000)
        reader = audit(page)
    finally:
        context.close()
    for name, found in (("Analysis", analysis), ("Test yourself", reader)):
        assert [v for v in found if v["impact"] in SERIOUS] == [], (name, described(found))
        # The headings go down one level at a time (it was the page's one moderate violation).
        assert "heading-order" not in {v["id"] for v in found}, (name, described(found))
