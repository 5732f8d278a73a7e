"""A real browser (Debian's Chromium, driven by Playwright) uses the running app."""
import time
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest

from conftest import CHROMIUM, CHROMIUM_ARGS, EXAMPLES, REPO, require_chromium

require_chromium()


@pytest.fixture(scope="module")
def browser(app_server):
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, app_server):
    """A fresh page in its own context per test: nothing on it comes from an earlier test."""
    context = browser.new_context(viewport={"width": 1400, "height": 1600})
    page = context.new_page()
    page.goto(app_server.url, wait_until="load")
    page.wait_for_selector("#analyze", timeout=60_000)
    yield page
    context.close()


@contextmanager
def opened(browser, app_server, width: int, height: int = 1000, **options):
    """A fresh page of the app at this viewport, ready for an upload; closed afterwards."""
    context = browser.new_context(viewport={"width": width, "height": height}, **options)
    page = context.new_page()
    try:
        page.goto(app_server.url, wait_until="load")
        page.wait_for_selector("#analyze", timeout=60_000)
        yield page
    finally:
        context.close()


def upload(page, name="ISIC_0024394.jpg"):
    page.set_input_files("#lesion_image input[type=file]", str(EXAMPLES / "images" / name))
    # The upload resets the reading; after that, any analysis text is the next analysis's.
    page.wait_for_function("document.querySelector('#reading').innerText.includes('New image')", timeout=30_000)


def analyze_and_wait(page):
    page.locator("#analyze").click()
    page.wait_for_function("document.querySelector('#reading').innerText.includes('agree')", timeout=60_000)


def open_report(page):
    """Opens the Report JSON accordion (closed on a fresh page); its viewer mounts when opened."""
    page.get_by_text("Report JSON").click()


# The report JSON the viewer shows (one token per line), once it parses and UNTIL holds for it.
READ_REPORT = """() => {
  const e = document.querySelector('#report_json');
  if (!e) return null;
  try { const r = JSON.parse(e.innerText.split('\\n').join('')); return (UNTIL) ? r : null; }
  catch (err) { return null; }
}"""


def shown_report(page, until: str) -> dict:
    """Waits for the shown report to satisfy `until` (JavaScript over `r`): the action's own change."""
    return page.wait_for_function(READ_REPORT.replace("UNTIL", until), timeout=60_000).json_value()


def test_upload_analyze_and_see_both_models_explained(page):
    case = pd.read_csv(EXAMPLES / "metadata.csv").iloc[4]
    upload(page, f"{case.image_id}.jpg")
    page.locator("#age input").fill(str(int(case.age)))
    page.locator("#analyze").click()
    # Both probability panels list classes by full name and code.
    for panel in ("#fusion_probs", "#image_only_probs"):
        page.wait_for_function(f"document.querySelector('{panel}').innerText.includes('(nv)')",
                               timeout=60_000)
        text = page.locator(panel).inner_text()
        assert sum(f"({c})" in text for c in ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")) >= 5
    for cam in ("#fusion_cam img", "#image_only_cam img"):
        page.wait_for_selector(cam, state="visible", timeout=30_000)
        assert page.locator(cam).evaluate("img => img.naturalWidth") > 0
    page.wait_for_selector("#shap_plot .js-plotly-plot .main-svg", timeout=30_000)
    assert "agree" in page.locator("#reading").inner_text()
    assert "not a medical device" in page.locator("#notice").inner_text().lower()
    out = REPO / "test-artifacts"
    out.mkdir(exist_ok=True)
    page.screenshot(path=str(out / "analysis.png"), full_page=True)
    assert (out / "analysis.png").stat().st_size > 10_000


def test_one_click_on_an_example_analyses_it_and_the_report_tab_opens(page):
    vasc = pd.read_csv(EXAMPLES / "metadata.csv").set_index("dx").loc["vasc"]
    page.get_by_text("Vascular lesion (vasc) ·").click()
    page.wait_for_function("document.querySelector('#reading').innerText.includes('(vasc)') || "
                           "document.querySelector('#reading').innerText.match(/agree/)", timeout=60_000)
    page.wait_for_function(f"document.querySelector('#age input').value === '{int(vasc.age)}'", timeout=10_000)
    page.wait_for_function("document.querySelector('#melanoma_flag').innerText.includes('P(mel)')",
                           timeout=30_000)
    page.get_by_role("radio", name="95% specificity").check()
    page.wait_for_function("document.querySelector('#melanoma_flag').innerText.includes('95% specificity')",
                           timeout=30_000)
    page.get_by_role("tab", name="Model report").click()
    page.wait_for_selector("#model_report img", timeout=30_000)
    text = page.locator("#model_report").inner_text()
    assert "Clinical evaluation report" in text and "Imbalance and fusion study" in text
    page.screenshot(path=str(REPO / "test-artifacts" / "model_report.png"), full_page=True)


def test_untouched_inputs_are_analysed_as_not_entered(page):
    assert page.locator("#age input").input_value() == ""
    upload(page)
    open_report(page)
    analyze_and_wait(page)
    assert page.locator("#age input").input_value() == ""
    report = shown_report(page, "r.metadata")
    assert report["metadata"] == {"age": None, "sex": "unknown", "site": "unknown"}
    assert report["reading"].startswith("No metadata entered: the fusion model answered from the image alone")
    assert "entered metadata" not in report["reading"]
    assert "No metadata entered" in page.locator("#reading").inner_text()
    assert "age not entered" in page.locator("#subgroup").inner_text()
    out = REPO / "test-artifacts"
    out.mkdir(exist_ok=True)
    page.screenshot(path=str(out / "untouched.png"), full_page=True)


def test_a_cleared_age_is_not_entered(page):
    upload(page)
    open_report(page)
    page.locator("#age input").fill("45")
    page.locator("#analyze").click()
    shown_report(page, "r.metadata.age === 45")
    page.locator("#age input").fill("")
    page.locator("#analyze").click()
    report = shown_report(page, "r.metadata.age !== 45")
    assert report["metadata"]["age"] is None and report["reading"].startswith("No metadata entered")


def test_heatmap_class_change_redraws_with_the_current_inputs(page):
    upload(page)
    open_report(page)
    page.locator("#age input").fill("70")
    page.locator("#analyze").click()
    own = shown_report(page, "r.metadata.age === 70")["shap"]["class"]
    other, label = ("bkl", "Benign keratosis (bkl)") if own == "mel" else ("mel", "Melanoma (mel)")
    page.locator("#age input").fill("")
    page.locator("#cam_class input").click()
    page.get_by_role("option", name=label).click()
    report = shown_report(page, f"r.shap.class === '{other}'")
    assert report["metadata"]["age"] is None
    assert label in page.locator("#fusion_cam_note").inner_text()


def test_heatmap_method_selector_redraws_both_heatmaps(page):
    upload(page)
    analyze_and_wait(page)
    for note in ("#fusion_cam_note", "#image_only_cam_note"):
        assert page.locator(note).inner_text().startswith("Grad-CAM for")
    before = page.locator("#fusion_cam img").get_attribute("src")
    page.locator("#cam_method").get_by_text("LayerCAM", exact=True).click()
    page.wait_for_function("document.querySelector('#fusion_cam_note').innerText.startsWith('LayerCAM')",
                           timeout=60_000)
    page.wait_for_function("document.querySelector('#image_only_cam_note').innerText.startsWith('LayerCAM')",
                           timeout=60_000)
    assert page.locator("#fusion_cam img").get_attribute("src") != before   # a different map, not a relabel
    assert page.locator("#fusion_cam img").get_attribute("alt") == "Fusion LayerCAM"


def test_a_metadata_change_updates_the_fusion_side_without_a_new_analysis(page):
    upload(page)
    open_report(page)
    analyze_and_wait(page)
    shown_report(page, "r.metadata.site === 'unknown'")
    page.wait_for_selector("#what_if .js-plotly-plot .main-svg", timeout=30_000)
    assert "image-only (ignores metadata)" in page.locator("#what_if").inner_text()
    image_only = page.locator("#image_only_probs").inner_text()
    page.locator("#site input").click()
    page.get_by_role("option", name="face", exact=True).click()
    report = shown_report(page, "r.metadata.site === 'face'")      # no Analyze click, no upload
    assert report["what_if"]["site"]["values"][5] == "face"
    page.locator("#age input").press_sequentially("80", delay=50)    # typed, as a person does
    report = shown_report(page, "r.metadata.age === 80 && r.metadata.site === 'face'")
    i = report["what_if"]["age"]["values"].index(80)
    assert all(abs(report["what_if"]["age"]["probabilities"][c][i] - p) < 1e-6
               for c, p in report["fusion"]["probabilities"].items())
    assert page.locator("#image_only_probs").inner_text() == image_only   # the image side is untouched
    out = REPO / "test-artifacts"
    out.mkdir(exist_ok=True)
    page.screenshot(path=str(out / "what_if_1400.png"), full_page=True)


def test_phone_width_layout_has_no_sideways_scroll(browser, app_server):
    context = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2)
    page = context.new_page()
    try:
        page.goto(app_server.url, wait_until="load")
        page.wait_for_selector("#analyze", timeout=60_000)
        upload(page)
        analyze_and_wait(page)
        for plot in ("#shap_plot", "#what_if"):
            page.wait_for_selector(f"{plot} .js-plotly-plot .main-svg", timeout=30_000)
            # Drawn within the phone's width: no part of the plot sticks out of its panel.
            assert page.locator(f"{plot} .main-svg").first.bounding_box()["width"] <= 390
        assert page.evaluate("document.documentElement.scrollWidth") <= 391
        out = REPO / "test-artifacts"
        out.mkdir(exist_ok=True)
        page.screenshot(path=str(out / "analysis_390.png"), full_page=True)
    finally:
        context.close()


@pytest.mark.parametrize("width", [1400, 390])
def test_similar_cases_gallery_after_the_untouched_default_flow(browser, app_server, width):
    """Upload, Analyze, touching nothing: 8 captioned thumbnails of confirmed cases; a click
    enlarges one and another click closes it; 4 cases on request; nothing sticks out at 390 px."""
    with opened(browser, app_server, width) as page:
        upload(page)
        analyze_and_wait(page)
        figures = page.locator("#similar_cases figure")
        figures.first.wait_for(timeout=30_000)
        assert figures.count() == 8
        names = {"Actinic keratosis", "Basal cell carcinoma", "Benign keratosis", "Dermatofibroma", "Melanoma",
                 "Melanocytic nevus", "Vascular lesion"}
        for k in range(8):
            caption = figures.nth(k).locator("figcaption").inner_text()
            assert any(n in caption for n in names) and "similarity" in caption, caption
            img = figures.nth(k).locator("img")
            assert img.evaluate("i => i.complete && i.naturalWidth >= 120"), "a thumbnail did not load"
        assert "Vote of the 8 most similar confirmed cases" in page.locator("#similar_vote").inner_text()
        assert "CC BY-NC 4.0" in page.locator("#similar_vote").inner_text()
        first = figures.first.locator("img")
        small = first.bounding_box()["width"]
        first.click()
        page.wait_for_function("document.querySelector('#similar_cases img').getBoundingClientRect().width > "
                               f"{small * 1.5}", timeout=10_000)
        out = REPO / "test-artifacts"
        out.mkdir(exist_ok=True)
        page.screenshot(path=str(out / f"similar_enlarged_{width}.png"))
        first.click()
        page.wait_for_function("document.querySelector('#similar_cases img').getBoundingClientRect().width < "
                               f"{small * 1.2}", timeout=10_000)
        assert page.evaluate("document.documentElement.scrollWidth") <= width + 1
        page.locator("#similar_k").get_by_text("4", exact=True).click()
        page.wait_for_function("document.querySelectorAll('#similar_cases figure').length === 4", timeout=30_000)
        page.locator("#similar_cases").scroll_into_view_if_needed()
        page.screenshot(path=str(out / f"similar_cases_{width}.png"), full_page=True)


def held_pdfs(root: Path) -> list[Path]:
    return sorted(root.rglob("*.pdf"))


@pytest.mark.parametrize("width", [1400, 390])
def test_case_report_downloads_as_a_pdf_and_leaves_nothing_behind(browser, app_server, width, tmp_path):
    """Before an analysis the button says what to do; after the untouched default flow it downloads
    a one-page PDF holding the fusion model's top class and the disclaimer, and the server's copy
    is gone once served."""
    from pypdf import PdfReader
    context = browser.new_context(viewport={"width": width, "height": 1000}, accept_downloads=True)
    page = context.new_page()
    try:
        page.goto(app_server.url, wait_until="load")
        page.wait_for_selector("#analyze", timeout=60_000)
        page.locator("#case_report").click()
        page.get_by_text("Analyze an image first").first.wait_for(timeout=30_000)
        upload(page)
        analyze_and_wait(page)
        # The Label shows its title, then the top class, as "Full name (code)".
        lines = [line.strip() for line in page.locator("#fusion_probs").inner_text().split("\n")]
        top = next(line for line in lines[1:] if line.endswith(")") and "(" in line)
        with page.expect_download(timeout=60_000) as info:
            page.locator("#case_report").click()
        download = info.value
        assert download.suggested_filename.startswith("case_report_") and download.suggested_filename.endswith(".pdf")
        path = tmp_path / download.suggested_filename
        download.save_as(path)
        reader = PdfReader(path)
        text = " ".join(reader.pages[0].extract_text().split())
        # Every class is named on the page (the probability bars); the top class is named as such.
        assert len(reader.pages) == 1 and f"Top class: fusion {top}" in text, (top, text)
        assert "Research demo, not a medical device" in text
        assert "Age: not entered" in text
        path.unlink()   # the downloaded report, once read: nothing of it stays under the temp folder
        page.wait_for_timeout(500)
        assert held_pdfs(app_server.temp_dir) == []
    finally:
        context.close()


# Makes the page's download links inert: the app hands the browser its PDF, which is then never
# fetched. (page.route cannot stand in: Chromium starts an <a download> click's download outside
# the page's request interception, so the PDF was served, and removed, in most runs under load.)
NEVER_DOWNLOAD = """(() => {
  const click = HTMLElement.prototype.click;
  HTMLAnchorElement.prototype.click = function () {
    if (!this.hasAttribute("download")) click.call(this);
  };
})();"""


def test_a_case_report_never_fetched_goes_when_the_page_is_closed(browser, app_server):
    """The PDF is never fetched (the page's download is stopped before it starts): closing the page
    ends the session, and with it the PDF (long before the upload lifetime would)."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    page = context.new_page()
    downloads = []
    page.on("download", lambda d: downloads.append(d.url))
    try:
        page.add_init_script(NEVER_DOWNLOAD)
        page.goto(app_server.url, wait_until="load")
        page.wait_for_selector("#analyze", timeout=60_000)
        upload(page)
        analyze_and_wait(page)
        page.locator("#case_report").click()
        deadline = time.time() + 30
        while not held_pdfs(app_server.temp_dir) and time.time() < deadline:
            page.wait_for_timeout(200)
        assert len(held_pdfs(app_server.temp_dir)) == 1
        page.wait_for_timeout(1000)
        assert downloads == [] and len(held_pdfs(app_server.temp_dir)) == 1   # held, not fetched
    finally:
        context.close()
    t0 = time.time()
    while held_pdfs(app_server.temp_dir) and time.time() - t0 < 30:
        time.sleep(0.2)
    assert held_pdfs(app_server.temp_dir) == [], "the PDF outlived its session"


def test_several_images_of_one_lesion_give_one_answer_and_a_heatmap_per_image(page, tmp_path):
    from PIL import Image
    im = Image.open(EXAMPLES / "images" / "ISIC_0024394.jpg")
    extra = [tmp_path / "mirrored.png", tmp_path / "flipped.png"]
    im.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(extra[0])
    im.transpose(Image.Transpose.FLIP_TOP_BOTTOM).save(extra[1])
    upload(page)
    page.set_input_files("#extra_images input[type=file]", [str(p) for p in extra])
    page.wait_for_function("document.querySelector('#extra_images').innerText.includes('flipped')", timeout=30_000)
    page.locator("#analyze").click()
    page.wait_for_function("document.querySelector('#reading').innerText.includes('From 3 images of this lesion')",
                           timeout=60_000)
    for panel in ("#fusion_cam", "#image_only_cam"):
        assert page.locator(f"{panel} .cam_strip img").count() == 3
        assert "Image 3 of 3" in page.locator(panel).inner_text()
    assert page.evaluate("document.documentElement.scrollWidth") <= 1401


def test_one_photo_dropped_into_both_boxes_counts_once(page, tmp_path):
    """A patient's photo (not a bundled example, so its upload is deleted once read) as the main
    image and again as a further image: one image, said so, no 'no longer available'."""
    from PIL import Image
    photo = tmp_path / "patient.png"
    Image.open(EXAMPLES / "images" / "ISIC_0024394.jpg").transpose(Image.Transpose.ROTATE_180).save(photo)
    page.set_input_files("#lesion_image input[type=file]", str(photo))
    page.wait_for_function("document.querySelector('#reading').innerText.includes('New image')", timeout=30_000)
    page.set_input_files("#extra_images input[type=file]", [str(photo)])
    page.wait_for_function("document.querySelector('#extra_images').innerText.includes('patient')", timeout=30_000)
    page.locator("#analyze").click()
    page.wait_for_function("document.querySelector('#reading').innerText.includes('counted once')", timeout=60_000)
    reading = page.locator("#reading").inner_text()
    assert "2 of the images were the same; counted once" in reading and "From " not in reading
    assert "no longer available" not in page.locator("body").inner_text()
    for panel in ("#fusion_cam", "#image_only_cam"):
        assert page.locator(f"{panel} .cam_strip img").count() == 0 and page.locator(f"{panel} img").count() == 1


# The words of the matched elements that the browser laid out over more than one line.
WORDS_BROKEN_ACROSS_LINES = """(selector) => {
  const broken = [];
  for (const cell of document.querySelectorAll(selector)) {
    const walker = document.createTreeWalker(cell, NodeFilter.SHOW_TEXT);
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
      for (const m of node.data.matchAll(/\\S+/g)) {
        const range = document.createRange();
        range.setStart(node, m.index);
        range.setEnd(node, m.index + m[0].length);
        const tops = new Set([...range.getClientRects()].filter(r => r.width > 0).map(r => Math.round(r.top)));
        if (tops.size > 1) broken.push(m[0]);
      }
    }
  }
  return broken;
}"""


@pytest.mark.parametrize("width", [1400, 390])
def test_the_lesion_outlined_and_measured_after_upload_and_analyze(browser, app_server, width):
    """Upload and Analyze only: #lesion_view shows the image with its outline, #lesion_measures
    names asymmetry, border and colours with numbers; the outline toggle redraws both heatmaps."""
    import re
    with opened(browser, app_server, width) as page:
        upload(page)
        analyze_and_wait(page)
        page.wait_for_selector("#lesion_view img", timeout=30_000)
        assert "outline" in page.locator("#lesion_view img").get_attribute("alt")
        text = page.locator("#lesion_measures").inner_text()
        for name in ("Asymmetry", "Border irregularity", "Border sharpness", "Colours present"):
            assert re.search(name + r"[^\n]*\d", text), (name, text)
        assert "not a diagnosis" in text and "inside the outline" in text
        before = page.locator("#fusion_cam img").get_attribute("src")
        page.locator("#outline_toggle input").uncheck()
        page.wait_for_function("(s) => document.querySelector('#fusion_cam img').src !== s", arg=before,
                               timeout=30_000)
        assert page.evaluate("document.documentElement.scrollWidth") <= width + 1
        # The measures table breaks lines between words only, never inside a number such as "0.06".
        out = REPO / "test-artifacts"
        out.mkdir(exist_ok=True)
        page.locator("#lesion_measures").screenshot(path=str(out / f"lesion_measures_{width}.png"))
        assert page.evaluate(WORDS_BROKEN_ACROSS_LINES, "#lesion_measures td, #lesion_measures th") == []
        page.screenshot(path=str(out / f"lesion_{width}.png"), full_page=True)
