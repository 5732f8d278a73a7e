"""'Test yourself' (the reader mode) without a browser: the shipped held-out cases and their manifest
entry, decks drawn from a code, the scoring before and after the revision, the answers' CSV and its
short life on the server, and the tab's events on the real models."""
import asyncio
import csv
import io
import shutil
from collections import Counter

import pandas as pd
import pytest

from conftest import DATA, REPO, needs_dataset, run_module
from lesion_app.classifier.manifest import Manifest, WeightsError
from lesion_app.classifier.reader_cases import CONFIRMATIONS, ReaderCases, load_reader_cases
from lesion_app.classifier.vocab import CLASSES, class_label
from lesion_app.classifier.weights import WEIGHTS_DIR, sha256_file
from lesion_app.files.report_files import ReportFiles, ServeOnce
from lesion_app.page.presentation import labelled
from lesion_app.page.reader import ANSWERING, FINISHED, REVEALED, ReaderEvents, ReaderSession
from lesion_app.page.reader_deck import ReaderError, draw_deck, new_deck_code, parse_deck_code
from lesion_app.page.reader_score import CSV_COLUMNS, CaseAnswer, answers_csv, balanced_accuracy, score, score_markdown

HELDOUT = pd.read_csv(REPO / "train" / "splits" / "ham10000_heldout.csv")


@pytest.fixture(scope="module")
def cases() -> ReaderCases:
    return load_reader_cases(WEIGHTS_DIR, Manifest.load(WEIGHTS_DIR))


def deck_of(cases, code, size=20):
    return draw_deck(code, cases.dx, cases.lesion_id, cases.image_id, size)


# ----------------------------------------------------------------------------- the shipped cases

def test_the_shipped_cases_are_the_heldout_slice_hashed_in_the_manifest(cases):
    manifest = Manifest.load(WEIGHTS_DIR)
    entry = manifest.reader_cases
    assert entry["file"] in {e["file"] for e in manifest.file_entries()}
    assert sha256_file(WEIGHTS_DIR / entry["file"]) == entry["sha256"]
    assert (WEIGHTS_DIR / entry["file"]).stat().st_size < 4 * 2**20
    # Every held-out image, with HAM10000's diagnosis, and nothing else.
    assert cases.image_id == HELDOUT["image_id"].tolist() and cases.dx == HELDOUT["dx"].tolist()
    assert cases.lesion_id == HELDOUT["lesion_id"].tolist() and len(cases) == entry["n_images"] == 423
    case = cases[0]
    assert case.image().size == (200, 150) and case.media_type == "image/jpeg"
    assert set(cases.table["dx_type"]) <= set(CONFIRMATIONS)


@needs_dataset
def test_the_shipped_cases_are_the_datasets_own_files_and_records(cases):
    md = pd.read_csv(DATA / "metadata.csv").set_index("image_id").loc[cases.image_id]
    assert md["dx_type"].tolist() == cases.table["dx_type"]
    assert [None if pd.isna(a) else float(a) for a in md["age"]] == cases.table["age"]
    for i in (0, 100, 422):
        assert cases.images[i] == (DATA / "images" / f"{cases.image_id[i]}.jpg").read_bytes()


def weights_with_cases(tmp_path):
    """The manifest and the reader cases, copied (all load_reader_cases reads)."""
    weights = tmp_path / "weights"
    weights.mkdir()
    for name in ("manifest.json", "reader_cases.safetensors"):
        shutil.copy(WEIGHTS_DIR / name, weights / name)
    return weights


def test_a_damaged_cases_file_refuses_to_load_naming_it(tmp_path):
    weights = weights_with_cases(tmp_path)
    path = weights / "reader_cases.safetensors"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="reader_cases.safetensors is corrupted"):
        load_reader_cases(weights, Manifest.load(weights))
    path.write_bytes(b"not a file of cases")   # with a matching checksum: still named, no traceback
    m = Manifest.load(weights)
    m.with_reader_cases({**m.reader_cases, "sha256": sha256_file(path)}).save(weights)
    with pytest.raises(WeightsError, match="reader_cases.safetensors is not a readable file of reader cases"):
        load_reader_cases(weights, Manifest.load(weights))
    path.unlink()
    with pytest.raises(WeightsError, match="reader_cases.safetensors is missing"):
        load_reader_cases(weights, Manifest.load(weights))


def test_the_app_refuses_to_start_with_a_damaged_cases_file(tmp_path):
    import subprocess
    import sys
    weights = tmp_path / "weights"
    shutil.copytree(WEIGHTS_DIR, weights)
    path = weights / "reader_cases.safetensors"
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))
    r = subprocess.run([sys.executable, "app.py"], cwd=REPO, capture_output=True, text=True, timeout=300,
                       env={**__import__("os").environ, "LESION_APP_WEIGHTS": str(weights),
                            "GRADIO_TEMP_DIR": str(tmp_path / "tmp")})
    assert r.returncode != 0
    assert "cannot start the app" in r.stderr and "reader_cases.safetensors is corrupted" in r.stderr, r.stderr[-2000:]


def test_weights_without_cases_have_none_and_the_tab_says_so():
    m = Manifest.load(WEIGHTS_DIR)
    data = {k: v for k, v in m.to_dict().items() if k != "reader_cases"}
    assert load_reader_cases(WEIGHTS_DIR, Manifest.from_dict(data, "test")) is None
    with pytest.raises(ReaderError, match="ship no reader cases"):
        ReaderEvents(None, None).start("")


@needs_dataset
def test_the_release_command_rebuilds_the_same_file(tmp_path):
    weights = weights_with_cases(tmp_path)
    r = run_module("train.release.reader_cases", "--weights", weights, "--data", DATA)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (weights / "reader_cases.safetensors").read_bytes() == (WEIGHTS_DIR / "reader_cases.safetensors").read_bytes()
    entry = Manifest.load(weights).reader_cases
    assert entry["sha256"] == Manifest.load(WEIGHTS_DIR).reader_cases["sha256"] and entry["n_images"] == 423


# ----------------------------------------------------------------------------- decks

def test_a_code_fixes_the_deck_and_its_order(cases):
    deck = deck_of(cases, "K7M2Q")
    assert deck == deck_of(cases, "K7M2Q")
    assert deck == deck_of(cases, parse_deck_code(" k7m-2q "))
    assert deck != deck_of(cases, "K7M2R")
    # Not the row order: the same cases given in another order give the same images in the same order.
    order = list(range(len(cases)))[::-1]
    shuffled = draw_deck("K7M2Q", [cases.dx[i] for i in order], [cases.lesion_id[i] for i in order],
                         [cases.image_id[i] for i in order])
    assert [cases.image_id[order[i]] for i in shuffled] == [cases.image_id[i] for i in deck]


def test_every_deck_has_every_class_a_quarter_melanomas_and_each_lesion_once(cases):
    held = set(HELDOUT["image_id"])
    firsts = set()
    for n in range(150):
        code = f"T{n:03d}"
        deck = deck_of(cases, code)
        dx = Counter(cases.dx[i] for i in deck)
        assert len(deck) == 20 and set(dx) == set(CLASSES), (code, dx)
        assert dx["mel"] == 5, (code, dx)
        assert len({cases.lesion_id[i] for i in deck}) == 20
        assert {cases.image_id[i] for i in deck} <= held
        firsts.add(deck[0])
    assert len(firsts) > 60   # the order is drawn too, not only the set
    small = deck_of(cases, "K7M2Q", size=7)
    assert sorted(cases.dx[i] for i in small) == sorted(CLASSES)
    with pytest.raises(ValueError, match="at least 7 cases"):
        deck_of(cases, "K7M2Q", size=6)


def test_deck_codes_are_short_and_typed_codes_are_checked():
    code = new_deck_code()
    assert len(code) == 5 and parse_deck_code(code) == code and not set(code) & set("IO01")
    assert new_deck_code() != new_deck_code() or new_deck_code() != code
    assert parse_deck_code("") is None and parse_deck_code("   ") is None and parse_deck_code(None) is None
    for bad in ("ab", "K7M2Q!", "x" * 13):
        with pytest.raises(ReaderError, match="A deck code is 3 to 12 letters and digits"):
            parse_deck_code(bad)


# ----------------------------------------------------------------------------- scoring and the CSV

def answer(n, truth, before, after, fusion, image_only, excise_before=None, excise_after=None):
    probs = {c: 0.0 for c in CLASSES}
    return CaseAnswer(number=n, image_id=f"ISIC_{n:07d}", lesion_id=f"HAM_{n:07d}", truth=truth, dx_type="histo",
                      age=50.0 if n % 2 else None, sex="female", site="back", before=before,
                      excise_before=excise_before, fusion=fusion, image_only=image_only,
                      fusion_probabilities={**probs, fusion: 0.8}, image_only_probabilities={**probs, image_only: 0.6},
                      similar_vote="nv", after=after, excise_after=excise_after)


ANSWERS = (
    answer(1, "mel", "nv", "mel", "mel", "nv", "no", "yes"),    # better; fusion catches it
    answer(2, "mel", "mel", "mel", "nv", "nv", "yes", "yes"),   # kept, right
    answer(3, "nv", "nv", "mel", "nv", "nv"),                   # worse
    answer(4, "bcc", "bkl", "akiec", "bcc", "bkl"),             # one wrong answer for another
    answer(5, "nv", "nv", "nv", "nv", "mel"),                   # kept, right
)


def test_the_score_before_and_after_the_revision():
    s = score(ANSWERS)
    assert s.cases == 5 and s.melanomas == 2 and s.classes == 3
    assert s.correct == {"before": 3, "after": 3, "fusion": 4, "image_only": 1}
    assert s.accuracy["before"] == pytest.approx(0.6) and s.accuracy["fusion"] == pytest.approx(0.8)
    # Mean recall over mel, nv, bcc: before 1/2, 2/2, 0/1; after 2/2, 1/2, 0/1; fusion 1/2, 2/2, 1/1.
    assert s.balanced_accuracy["before"] == pytest.approx(0.5)
    assert s.balanced_accuracy["after"] == pytest.approx(0.5)
    assert s.balanced_accuracy["fusion"] == pytest.approx((0.5 + 1 + 1) / 3)
    assert s.balanced_accuracy["image_only"] == pytest.approx((0 + 0.5 + 0) / 3)
    assert s.melanomas_caught == {"before": 1, "after": 2, "fusion": 1, "image_only": 0}
    assert s.melanomas_excised == {"before": 1, "after": 2}
    assert (s.better, s.worse, s.other) == (1, 1, 1)
    assert [a.change for a in ANSWERS] == ["better", "kept", "worse", "other", "kept"]
    md = score_markdown(s, 20)
    assert "Cases done: 5 of 20" in md and "| You, before the models | 3/5 (60%) | 0.50 | 1/2 |" in md
    assert "| Fusion model | 4/5 (80%) | 0.83 | 1/2 |" in md and "| Image-only model | 1/5 (20%) | 0.17 | 0/2 |" in md
    assert "changed your answer 3 times: 1 for the better, 1 for the worse**, 1 from one wrong answer" in md
    assert "excise or biopsy 1 of the 2 melanomas before seeing the models, 2 after" in md


def test_a_case_not_yet_passed_is_not_scored():
    pending = answer(6, "df", "df", None, "df", "df")
    assert score((*ANSWERS, pending)) == score(ANSWERS)
    empty = score(())
    assert empty.cases == 0 and empty.accuracy["before"] is None and empty.balanced_accuracy["fusion"] is None
    assert "Cases done: 0 of 20" in score_markdown(empty, 20)
    assert balanced_accuracy([], []) is None


def test_the_csv_holds_one_row_per_case_done():
    pending = answer(6, "df", "df", None, "df", "df")
    rows = list(csv.DictReader(io.StringIO(answers_csv((*ANSWERS, pending), "K7M2Q").decode())))
    assert len(rows) == 5 and tuple(rows[0]) == CSV_COLUMNS
    first = rows[0]
    assert first["deck_code"] == "K7M2Q" and first["case"] == "1" and first["image_id"] == "ISIC_0000001"
    assert (first["confirmed_dx"], first["dx_type"], first["age"], first["sex"], first["site"]) == \
        ("mel", "histo", "50", "female", "back")
    assert (first["answer_before"], first["excise_before"], first["answer_after"], first["excise_after"]) == \
        ("nv", "no", "mel", "yes")
    assert (first["change"], first["fusion"], first["fusion_p"], first["image_only"], first["image_only_p"]) == \
        ("better", "mel", "0.8000", "nv", "0.6000")
    assert [r["correct_before"] for r in rows] == ["0", "1", "1", "0", "1"]
    assert [r["correct_after"] for r in rows] == ["1", "1", "0", "0", "1"]
    assert rows[1]["age"] == "" and rows[2]["excise_before"] == ""


def test_the_csv_is_removed_once_served_or_when_its_page_closes(tmp_path):
    files = ReportFiles(tmp_path)
    data = answers_csv(ANSWERS, "K7M2Q")
    path = files.write(data, session="s1", name="reader_answers_K7M2Q_20260101-000000", suffix=".csv")
    assert path.name == "reader_answers_K7M2Q_20260101-000000.csv" and path.read_bytes() == data
    assert files.held() == [path] and files.owns(path)

    async def get(url_path):
        async def app(scope, receive, send):
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": data, "more_body": False})

        async def send(message):
            pass
        await ServeOnce(app, files)({"type": "http", "method": "GET", "path": url_path}, None, send)

    asyncio.run(get(f"/gradio_api/file={path}"))
    assert files.held() == [] and not path.parent.exists() and list(files.root.iterdir()) == []
    unfetched = files.write(data, session="s2", name="reader_answers_X", suffix=".csv")
    files.end_session("s2")
    assert not unfetched.exists() and files.held() == []
    for name, suffix in (("../escape", ".csv"), ("x", ".txt"), ("", ".csv")):
        with pytest.raises(ValueError):
            files.write(data, name=name, suffix=suffix)


# ----------------------------------------------------------------------------- the events on the real models

@pytest.fixture(scope="module")
def events(cases):
    from lesion_app.analysis.predictor import Predictor
    return ReaderEvents(Predictor(WEIGHTS_DIR), cases, deck_size=7)


def shown_text(view) -> str:
    return " ".join(str(v) for v in view.shown().values())


def test_a_deck_through_to_its_end_on_the_real_models(events, cases):
    view, s = events.start("k7m2q", ReaderSession())
    assert s.code == "K7M2Q" and view.code == "K7M2Q" and view.phase == ANSWERING and len(s.deck) == 7
    for name in ("next", "reveal"):
        with pytest.raises(ReaderError, match="Reveal this case first|Choose a diagnosis first"):
            events.next(None, None, s) if name == "next" else events.reveal(None, None, s)
    with pytest.raises(ReaderError, match="Start a deck first"):
        events.reveal("mel", None, ReaderSession())
    for k, row in enumerate(s.deck):
        case = cases[row]
        # Nothing of the truth before the reveal: not the diagnosis, its confirmation, nor the image id.
        text = shown_text(view)
        assert f"case **{k + 1}** of 7" in view.progress
        assert case.image_id not in text and "Confirmed" not in text and class_label(case.dx) not in text
        first = CLASSES[k % len(CLASSES)]
        view, s = events.reveal(first, "yes" if k % 2 else None, s)
        assert view.phase == REVEALED and s.pending.before == first and view.revision == first
        assert f"Confirmed diagnosis: {class_label(case.dx)}" in view.truth and case.image_id in view.truth
        assert case.confirmed_by in view.truth
        a = events.predictor.analyze(case.image(), case.age, case.sex, case.site)
        assert s.pending.fusion == a.fusion.top and s.pending.image_only == a.image_only.top
        assert view.fusion_probs == labelled(a.fusion) and view.fusion_cam.startswith("<img")
        assert f"for {class_label(a.fusion.top)}" in view.fusion_cam
        assert "Similar confirmed cases' vote" in view.similar
        with pytest.raises(ReaderError, match="Already revealed"):
            events.reveal(first, None, s)
        revised = case.dx if k == 0 else None      # the first case revised to the truth, the rest kept
        view, s = events.next(revised, None, s)
        done = s.answers[-1]
        assert done.after == (case.dx if k == 0 else first) and done.excise_after == done.excise_before
        assert f"Cases done: {k + 1} of 7" in view.score
    assert view.phase == FINISHED and s.finished and "Deck finished" in view.image
    assert score(s.answers).cases == 7 and score(s.answers).correct["after"] >= 1
    data, name = events.answers_file(s)
    assert name.startswith("reader_answers_K7M2Q_") and len(data.decode().splitlines()) == 8
    with pytest.raises(ReaderError, match="deck is finished"):
        events.reveal("mel", None, s)
    with pytest.raises(ReaderError, match="No answers yet"):
        events.answers_file(ReaderSession())
    # A new deck forgets the old answers; the same code gives the same deck.
    again, s2 = events.start("K7M2Q", s)
    assert s2.answers == () and s2.deck == s.deck


def test_a_closed_page_forgets_its_reader_state():
    from types import SimpleNamespace
    from lesion_app.page.reader_tab import forgetting
    state = SimpleNamespace(_id=7)
    session = SimpleNamespace(state_data={7: ReaderSession(code="K7M2Q"), 3: "the analysis tab's"})
    demo = SimpleNamespace(state_holder=SimpleNamespace(session_data={"abc": session}))
    forget = forgetting(demo, SimpleNamespace(state=state))
    forget(SimpleNamespace(session_hash="abc"))
    assert session.state_data == {3: "the analysis tab's"}
    forget(SimpleNamespace(session_hash="gone"))   # an unknown session: nothing to do


def test_reveal_waits_in_the_models_queue_and_the_tab_is_wired(events, cases):
    from lesion_app.page.ui import build_app
    demo = build_app(events.predictor, reader_cases=cases)
    fns = {fn.name: fn for fn in demo.fns.values() if fn.name in ("start", "new_deck", "reveal", "next", "answers_csv")}
    assert set(fns) == {"start", "new_deck", "reveal", "next", "answers_csv"}
    assert fns["reveal"].concurrency_id == "model" and fns["reveal"].concurrency_limit == 1
    assert all(fn.api_visibility == "private" for fn in fns.values())


def test_a_readers_slip_is_one_warning_and_keeps_the_deck_and_the_answers(events, tmp_path):
    """Reveal before a diagnosis, Next before Reveal, Reveal twice, a malformed deck code, Reveal or
    Next on a finished deck or before any deck, the CSV before any answer: each is one warning (outside
    a Gradio event, gr.Warning is a Python UserWarning) and every output stays as it was, so the
    reader's deck, place and answers are kept; the right next action then works."""
    from dataclasses import replace
    import gradio as gr
    from lesion_app.page.reader_tab import layout, on_tab
    with gr.Blocks():
        tab = layout()
    served = ReaderEvents(events.predictor, events.cases, deck_size=7, files=ReportFiles(tmp_path))

    class Tab:   # the tab's events as the wiring hands them to Gradio (reader_tab.wire)
        def __getattr__(self, name):
            return on_tab(tab, getattr(served, name))

        def answers_csv(self, *values):
            return on_tab(tab, served.answers_csv, nothing=lambda: None)(*values)
    h = Tab()

    def slip(message, event, *args):
        with pytest.warns(UserWarning) as said:
            out = event(*args)
        assert [str(w.message) for w in said] == [message] or \
            (len(said) == 1 and str(said[0].message).startswith(message)), [str(w.message) for w in said]
        return out
    s = h.start("k7m2q", ReaderSession())[tab.state]
    assert slip("Choose a diagnosis first; then reveal.", h.reveal, None, "yes", s) == gr.skip()
    assert slip("Reveal this case first.", h.next, "mel", None, s) == gr.skip()
    # What the reader typed comes back escaped: Gradio renders a toast's text as HTML.
    assert slip("A deck code is 3 to 12 letters and digits", h.start, "<b>K7</b>", s) == gr.skip()
    with pytest.warns(UserWarning, match="not '&lt;b&gt;K7&lt;/b&gt;'"):
        h.start("<b>K7</b>", s)
    assert slip("Start a deck first.", h.reveal, "mel", None, ReaderSession()) == gr.skip()
    assert slip("No answers yet: finish a case", h.answers_csv, s, None) is None   # the download fetches nothing
    revealed = h.reveal("mel", "yes", s)
    r = revealed[tab.state]
    assert r.pending.before == "mel" and "Confirmed diagnosis" in revealed[tab.truth]
    assert slip("Already revealed: revise your answer", h.reveal, "bcc", None, r) == gr.skip()
    done = h.next(None, None, r)
    assert "Cases done: 1 of 7" in done[tab.score] and done[tab.state].answers[0].before == "mel"
    finished = replace(done[tab.state], position=len(s.deck))
    for event, args in ((h.reveal, ("mel", None)), (h.next, ("mel", None))):
        assert slip("This deck is finished: start another one.", event, *args, finished) == gr.skip()
    assert finished.answers == done[tab.state].answers and h.answers_csv(finished, None).endswith(".csv")
