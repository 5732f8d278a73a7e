"""train.evaluation.compare_runs: variants compared out-of-fold, paired, on known answers."""
import json

import numpy as np
import pandas as pd
import pytest

from lesion_app.classifier.vocab import CLASSES
from train.data.logits import LOGIT_COLUMNS
from train.evaluation import compare_runs
from train.evaluation.metrics import balanced_accuracy, softmax


def write_run(root, name, logits: np.ndarray, ids, temperature=1.0, seconds=10.0, kinds=("fusion", "image_only")):
    """A finished train.fitting.cv folder holding these out-of-fold logits for kinds (both by default)."""
    run = root / name
    for k in kinds:
        for f in range(2):
            (run / f"{k}_fold{f}").mkdir(parents=True)
            (run / f"{k}_fold{f}" / "member.json").write_text(json.dumps({"train_seconds": seconds}))
    frames = [pd.DataFrame(logits, columns=LOGIT_COLUMNS).assign(image_id=ids, fold=0, model=k)
              for k in kinds]
    pd.concat(frames).to_csv(run / "oof_logits.csv", index=False)
    (run / "cv.json").write_text(json.dumps({
        "out_of_fold": {k: {"temperature": temperature} for k in kinds},
        "wall_time_seconds": {"feature_cache": 5.0}, "split_block": 4, "device": "cpu (2 threads)",
        "recipe": {"mel_margin_weight": 0.5}}))
    return run


@pytest.fixture
def case(tmp_path):
    """70 images of 35 lesions, 10 per class; the baseline right on half of each class, the
    variant right on 2 more melanomas."""
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(len(CLASSES)), 10)
    ids = [f"img{i}" for i in range(len(y))]
    folds = pd.DataFrame({"image_id": ids, "lesion_id": [f"les{i // 2}" for i in range(len(y))],
                          "dx": [CLASSES[c] for c in y], "fold": 0})
    base = rng.normal(0, 1, (len(y), len(CLASSES)))
    wrong = (y + 1) % len(CLASSES)
    for i in range(len(y)):
        base[i, y[i] if i % 10 < 5 else wrong[i]] += 5
    better = base.copy()
    mel = CLASSES.index("mel")
    fixed = [i for i in np.flatnonzero(y == mel) if i % 10 >= 5][:2]
    for i in fixed:
        better[i, mel] += 10
    return {"y": y, "ids": ids, "folds": folds, "base": base, "better": better,
            "a": write_run(tmp_path, "a", base, ids), "b": write_run(tmp_path, "b", better, ids), "root": tmp_path}


def test_paired_differences_are_the_metric_differences_with_a_ci_around_them(case):
    runs = [compare_runs.load_run(str(case["a"])), compare_runs.load_run(str(case["b"]))]
    result = compare_runs.compare(runs, case["folds"], n_boot=200)
    y = case["y"]
    want = balanced_accuracy(y, softmax(case["better"])) - balanced_accuracy(y, softmax(case["base"]))
    assert want == pytest.approx(2 / 10 / len(CLASSES))   # two more melanomas right: recall of mel +0.2
    for kind in ("fusion", "image_only"):
        d, lo, hi = result["kinds"][kind]["paired_differences"]["b"]["balanced_accuracy"]
        assert d == pytest.approx(want) and lo <= d <= hi and lo >= 0   # never worse in any resample
        v = result["kinds"][kind]["values"]["a"]["balanced_accuracy"]
        assert v[0] == pytest.approx(balanced_accuracy(y, softmax(case["base"]))) and v[1] <= v[0] <= v[2]
        assert set(result["kinds"][kind]["values"]["a"]) == set(compare_runs.METRICS)
    # The criterion needs both the balanced accuracy and the melanoma AUC to rise.
    mel_auc = result["kinds"]["fusion"]["paired_differences"]["b"]["mel_auc"][0]
    assert result["meets_criterion"]["b"] == (mel_auc > 0)
    assert result["runs"]["b"]["wall_time_seconds"]["fusion_members"] == 20.0
    assert result["runs"]["b"]["recipe"]["mel_margin_weight"] == 0.5


def test_the_command_writes_the_tables_and_refuses_runs_on_other_images(case, capsys):
    out = case["root"] / "variants.md"
    folds = case["root"] / "folds.csv"
    case["folds"].to_csv(folds, index=False)
    assert compare_runs.main([str(case["a"]), str(case["b"]), "--folds", str(folds), "--n-boot", "50",
                              "--out", str(out)]) == 0
    text = out.read_text()
    assert "| b − a |" in text and "mel sens @95% spec" in text and "Criterion" in text
    assert json.loads(out.with_suffix(".json").read_text())["n_images"] == 70
    other = write_run(case["root"], "other", case["base"][:-2], case["ids"][:-2])
    with pytest.raises(SystemExit, match="other images"):
        compare_runs.main([str(case["a"]), str(other), "--folds", str(folds), "--out", str(out)])
    (case["b"] / "cv.json").unlink()
    with pytest.raises(SystemExit, match="not a finished train.fitting.cv run"):
        compare_runs.main([str(case["a"]), str(case["b"]), "--folds", str(folds), "--out", str(out)])


def test_a_run_whose_image_only_members_are_training_is_judged_on_its_fusion_ensemble(case):
    """train.fitting.cv --kinds fusion leaves a run with fusion members only: the full comparison
    names what is missing, and --kinds fusion compares the ensembles the criterion reads."""
    out, folds = case["root"] / "fusion.md", case["root"] / "folds.csv"
    case["folds"].to_csv(folds, index=False)
    partial = write_run(case["root"], "partial", case["better"], case["ids"], kinds=("fusion",))
    args = [str(case["a"]), str(partial), "--folds", str(folds), "--n-boot", "50", "--out", str(out)]
    with pytest.raises(SystemExit, match="no out-of-fold image_only ensemble"):
        compare_runs.main(args)
    assert compare_runs.main(args + ["--kinds", "fusion"]) == 0
    result = json.loads(out.with_suffix(".json").read_text())
    assert list(result["kinds"]) == ["fusion"]
    full = compare_runs.compare([compare_runs.load_run(str(case["a"])), compare_runs.load_run(str(case["b"]))],
                                case["folds"], n_boot=50)
    assert result["kinds"]["fusion"]["paired_differences"]["partial"] == full["kinds"]["fusion"]["paired_differences"]["b"]
    assert result["meets_criterion"]["partial"] == full["meets_criterion"]["b"]
    text = out.read_text()
    assert "## fusion" in text and "## image-only" not in text and "Only the fusion ensembles" in text
    with pytest.raises(SystemExit):   # the criterion cannot be read without the fusion ensembles
        compare_runs.main(args + ["--kinds", "image_only"])


def test_the_release_itself_is_a_baseline_and_equals_its_own_logits(tmp_path):
    """`shipped` reads reports/oof_logits.csv and the manifest's temperatures: a run folder holding
    the same logits at the same temperatures differs from it by exactly nothing."""
    from lesion_app.classifier.manifest import WEIGHTS_DIR, Manifest
    from train import REPO
    from train.data.splits import DEFAULT_FOLDS, load_folds
    m = Manifest.load(WEIGHTS_DIR)
    run = tmp_path / "copy"
    run.mkdir()
    (run / "oof_logits.csv").write_bytes((REPO / "reports" / "oof_logits.csv").read_bytes())
    (run / "cv.json").write_text(json.dumps({"out_of_fold": {k: {"temperature": m.temperature(k)}
                                                             for k in ("fusion", "image_only")}}))
    shipped = compare_runs.load_run("shipped")
    assert shipped.name == f"{m.selection['shipped']} (shipped)" and shipped.recipe["backbone"] == m.backbone
    result = compare_runs.compare([shipped, compare_runs.load_run(str(run))], load_folds(DEFAULT_FOLDS), n_boot=5)
    assert result["n_images"] == len(load_folds(DEFAULT_FOLDS))   # every image, by the member of its fold
    for kind in ("fusion", "image_only"):
        for name, (d, lo, hi) in result["kinds"][kind]["paired_differences"]["copy"].items():
            assert d == lo == hi == 0, (kind, name)
    fusion = result["kinds"]["fusion"]["values"][shipped.name]["balanced_accuracy"][0]
    assert fusion == pytest.approx(m.models["fusion"]["out_of_fold_metrics"]["balanced_accuracy"])


def test_a_committed_release_is_a_baseline_and_an_unknown_revision_is_a_clear_error():
    """`shipped@REV` reads the release's out-of-fold logits and manifest as git holds them at REV, so a
    replaced release stays the baseline its successors were chosen against."""
    import subprocess
    from io import StringIO
    from lesion_app.classifier.manifest import Manifest
    from train import REPO
    show = lambda path: subprocess.run(["git", "show", f"HEAD:{path}"], cwd=REPO, capture_output=True,
                                       text=True, check=True).stdout
    m = Manifest.from_text(show("weights/manifest.json"), "HEAD")
    head = compare_runs.load_run("shipped@HEAD")
    assert head.name == f"{m.selection['shipped']} (shipped at HEAD)"
    assert head.temperature == {k: m.temperature(k) for k in ("fusion", "image_only")}
    pd.testing.assert_frame_equal(head.logits, pd.read_csv(StringIO(show("reports/oof_logits.csv"))))
    with pytest.raises(SystemExit, match="git has no weights/manifest.json at 'no-such-revision'"):
        compare_runs.load_run("shipped@no-such-revision")
