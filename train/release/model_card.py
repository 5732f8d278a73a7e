"""The model card (weights/MODEL_CARD.md, and the body of the Hub's README.md), drawn from the manifest.

train.release.bundle writes it; fit_ood and prediction_sets rewrite it when they extend the
manifest; publish puts it on the Hub. One text, so the copies never disagree.
"""
from __future__ import annotations

from lesion_app.classifier.manifest import MODEL_KEYS, Manifest
from lesion_app.classifier.models import ARCH, WHOLE_NETWORK
from lesion_app.classifier.vocab import CLASS_NAMES, CLASSES
from train.evaluation.compare_runs import about, kind_tables
from train.evaluation.report_render import coverage_markdown


def _f(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _table(models: dict, key: str) -> str:
    rows = ["| metric | fusion | image-only |", "|---|---|---|"]
    for k in ("balanced_accuracy", "macro_f1", "accuracy", "macro_auc", "ece"):
        rows.append(f"| {k.replace('_', ' ')} | {_f(models['fusion'][key].get(k))} | "
                    f"{_f(models['image_only'][key].get(k))} |")
    return "\n".join(rows)


def _per_class(models: dict, key: str) -> str:
    rows = ["| class | support | fusion recall | image-only recall | fusion precision | "
            "image-only precision | fusion F1 | image-only F1 | fusion AUC | image-only AUC |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    f, i = models["fusion"][key]["per_class"], models["image_only"][key]["per_class"]
    for c in CLASSES:
        rows.append(f"| {CLASS_NAMES[c]} ({c}) | {f[c]['support']} | {f[c]['recall']:.3f} | "
                    f"{i[c]['recall']:.3f} | {f[c]['precision']:.3f} | {i[c]['precision']:.3f} | "
                    f"{f[c]['f1']:.3f} | {i[c]['f1']:.3f} | {_f(f[c]['auc'])} | {_f(i[c]['auc'])} |")
    return "\n".join(rows)


def _variants(m: Manifest) -> str:
    rows = ["| run | backbone, fine-tuned from | trained on | wall time recorded | fusion OOF bal. acc. | "
            "fusion OOF macro-F1 | image-only OOF bal. acc. | image-only OOF macro-F1 | shipped |",
            "|---|---|---|---|---|---|---|---|---|"]
    for v in m.selection["variants_compared"]:
        o, split = v["out_of_fold"], v["split_block"]
        seconds = sum(v["wall_time_seconds"].values()) + sum(map(sum, v["member_train_seconds"].values()))
        rows.append(f"| {v['run']} | {v.get('backbone', ARCH)}, "
                    f"{'whole network' if split == WHOLE_NETWORK else f'blocks[{split}]'} | {v['device']} | "
                    f"{seconds / 60:.0f} min | {o['fusion']['balanced_accuracy']:.3f} | "
                    f"{o['fusion']['macro_f1']:.3f} | {o['image_only']['balanced_accuracy']:.3f} | "
                    f"{o['image_only']['macro_f1']:.3f} | {'yes' if v['run'] == m.selection['shipped'] else ''} |")
    comparison = m.selection.get("comparison")
    if comparison:
        rows += ["", f"Paired, with melanoma's figures (`{comparison['report']}`): {about(comparison)}", "",
                 *kind_tables(comparison, "###"),
                 f"Criterion, fixed before the runs: {comparison['criterion']}."]
    return "\n".join(rows)


def _other_clinics(m: Manifest) -> str:
    oc = m.other_clinics
    if not oc:
        return ""
    classes = ", ".join(oc["classes_present"] or [])

    def cell(kind: dict, key: str) -> str:
        return "n/a" if kind.get(key) is None else f"{kind[key]:.3f}"

    def sets(kind: dict) -> str:
        s = kind.get("sets_90")
        return "n/a" if s is None else f"{s['coverage']:.3f} ({s['mean_size']:.2f})"

    rows = "\n".join(
        f"| {r['label']} | {r['weights_version']}{' (shipped)' if r['shipped_weights'] else ''} | "
        f"{cell(r['fusion'], 'balanced_accuracy')} | {cell(r['fusion'], 'mel_auc')} | {cell(r['fusion'], 'mel_vs_nv_auc')} | "
        f"{sets(r['fusion'])} | {cell(r['image_only'], 'balanced_accuracy')} | {cell(r['image_only'], 'mel_auc')} |"
        for r in oc["rows"])
    return ("## Other clinics' images\n"
            f"{oc['folder']}: {oc['n']} dermoscopic images from other clinics and devices (classes {classes}; "
            f"aspect {oc['aspect'] or 'as stored'}), none of them trained on; `train.evaluation.evaluate`, each row "
            "through the input path it names. Balanced accuracy over the classes present. How many of them the OOD check calls "
            "not dermoscopic: the OOD section below.\n\n"
            "| scored | weights | fusion bal. acc. | melanoma AUC | mel-vs-nevus AUC | 90% sets cover (mean size) "
            "| image-only bal. acc. | melanoma AUC |\n|---|---|---|---|---|---|---|---|\n" + rows + "\n")


def _ood(m: Manifest) -> str:
    o = m.ood
    if not o:
        return ""
    f = o["flagged_share"]
    lines = ["## Out-of-distribution warning",
             f"{o['method']}. Fitted on {o['fitted_on']}. Thresholds: {o['threshold_rule']}.", "",
             "| images | kind | flagged |", "|---|---|---|",
             f"| held-out slice (thresholds set here) | dermoscopic | {f['heldout']:.1%} of {f['n_heldout']} |"]
    if "dermoscopic_unused" in f:
        by_class = ", ".join(f"{k} {v:.1%}" for k, v in f["dermoscopic_unused_by_class"].items())
        unmeasured = [c for c in CLASSES if c not in f["dermoscopic_unused_by_class"]]
        if unmeasured:
            by_class += f"; {', '.join(unmeasured)}: all in the fit sample, not measured here"
        lines.append(f"| other HAM10000 images, used for neither fit nor threshold | dermoscopic | "
                     f"{f['dermoscopic_unused']:.1%} of {f['dermoscopic_unused_n']} ({by_class}) |")
    if "other_clinic_unused" in f:
        lines.append(f"| {f['other_clinic']} images not fitted on (other clinics) | dermoscopic | "
                     f"{f['other_clinic_unused']:.1%} of {f['other_clinic_unused_n']} |")
    lines.append(f"| synthetic (plain colours, gradients, text, cartoons, patterns, noise) | not dermoscopic | "
                 f"{f['synthetic_non_dermoscopic']:.0%} of {f['synthetic_n']} |")
    for which in ("tuning", "evaluation"):
        r = o.get("real_photos", {}).get(which)
        if r:
            kinds = ", ".join(f"{k} {v['flagged']}/{v['n']}" for k, v in r["by_kind"].items())
            lines.append(f"| real photos, {which} set ({kinds}) | not dermoscopic | "
                         f"{r['flagged'] / max(r['n'], 1):.0%} of {r['n']} |")
    if o.get("real_photos"):
        lines += ["", f"Real photos: {o['real_photos']['about']}. The evaluation set's photos were kept for measurement only."]
    return "\n".join(lines) + "\n"


def _shift(m: Manifest) -> str:
    sh = m.shift
    if not sh:
        return ""
    lines = ["## How unlike the training images (shift score)",
             f"{sh['method']}. Fitted on {sh['fitted_on']}; percentiles from {sh['reference']}. "
             f"Measured on {sh['measured_on']}.", "",
             "| band (percentile) | images | fusion bal. acc. | melanoma AUC | 90% sets cover | 95% sets cover |",
             "|---|---|---|---|---|---|"]
    for b in sh["bands"]:
        r = b["measured"]
        src = ", ".join(f"{k} {v}" for k, v in r["sources"].items())
        fig = lambda k, f=".3f": format(r[k], f) if r.get(k) is not None else "n/a"  # noqa: E731
        lines.append(f"| {b['name']} ({b['from']:.0f}-{b['to']:.0f}) | {r['n']} ({src}) | {fig('balanced_accuracy')} | "
                     f"{fig('mel_auc')} | {fig('coverage_0.9')} | {fig('coverage_0.95')} |")
    lines += ["", "By source, the fusion ensemble as the app serves it:", "",
              "| images | n | bal. acc. (classes present) | melanoma AUC | mel-vs-nevus AUC | 90% sets cover |",
              "|---|---|---|---|---|---|"]
    for name, r in sh["by_source"].items():
        fig = lambda k, r=r: format(r[k], ".3f") if r.get(k) is not None else "n/a"  # noqa: E731
        lines.append(f"| {name} | {r['n']} | {fig('balanced_accuracy')} | {fig('mel_auc')} | {fig('mel_vs_nv_auc')} | "
                     f"{fig('coverage_0.9')} |")
    lines += ["", "Where the images lie: " + "; ".join(
        f"{s}: median percentile {r['median_percentile']:.0f}, "
        + ", ".join(f"{k} {v:.0%}" for k, v in r["share_by_band"].items()) for s, r in sh["by_source"].items()) + "."]
    return "\n".join(lines) + "\n"


def _skin_tone(m: Manifest) -> str:
    st = m.skin_tone
    if not st:
        return ""
    q = st["percentiles"]
    bands = ", ".join(f"{k} {v:.1%}" for k, v in st["band_share"].items())
    return ("## Skin tone of the training images\n"
            f"{st['method']}; measured on {st['measured_on']}. Angles: 1st-99th percentile {q[1]:.0f}-{q[99]:.0f} degrees, "
            f"median {q[50]:.0f} (above 90: b* below 0, a bluish cast). Bands: {bands}. The app warns outside the "
            "1st-99th percentiles.\n")


def _archive(m: Manifest) -> str:
    a = m.archive
    if not a:
        return ""
    lines = ["## Similar confirmed cases (archive)",
             f"`{a['file']}` holds {a['n_images']:,} images of {a['n_lesions']:,} lesions: {a['covers']}. Per image: "
             f"a {a['thumbnail']} thumbnail, the confirmed diagnosis, age, sex and site, and a {a['dims']}-d "
             f"`{a['embedding']}` embedding computed from the features every analysis already has (no extra "
             f"network pass). A query returns the k most similar lesions (k = {a['default_k']} by default, each "
             f"lesion once) and their {a['vote_weighting'].replace('_', '-')} vote, shown as a third opinion and "
             "never mixed into the models' probabilities. Uploads never join the archive.",
             f"{a['attribution']}: the archive's thumbnails are HAM10000 images and carry its licence."]
    ev = a.get("evidence")
    if ev:
        lines += ["", f"Embedding chosen on fold-based retrieval ({ev['study']}); criterion: {ev['selection']}.", "",
                  "| embedding | class-balanced mAP | mAP | P@1 | P@8 | vote (class-weighted, k=8) BA | macro AUC | mel AUC |",
                  "|---|---|---|---|---|---|---|---|"]
        for name, s in ev["out_of_fold"].items():
            v = s["vote_class_weighted_k8"]
            lines.append(f"| {name}{' (shipped)' if name == a['embedding'] else ''} | {s['class_balanced_mAP']:.3f} | "
                         f"{s['mAP']:.3f} | {s['precision@1']:.3f} | {s['precision@8']:.3f} | "
                         f"{v['balanced_accuracy']:.3f} | {v['macro_auc']:.3f} | {v['mel_auc']:.3f} |")
    return "\n".join(lines) + "\n"


def _segmentation(m: Manifest) -> str:
    e = m.segmentation
    if not e:
        return ""
    o, h = e["out_of_fold"], e["heldout"]
    ci = lambda x: f"{x['mean']:.3f} [{x['ci'][0]:.3f}, {x['ci'][1]:.3f}]"  # noqa: E731
    wt = e.get("training_wall_time_seconds", {})
    lines = ["## Lesion segmentation (the outline and its measures)",
             f"`{e['file']}`: {e['architecture']['decoder']}; trained on the HAM10000 lesion masks of the same "
             f"5 folds ({e['architecture']['loss']}, {e['architecture']['epochs']} epochs), the held-out slice kept "
             "out. One trunk pass serves classification and segmentation.", "",
             "| | Dice | Jaccard | threshold Jaccard (ISIC 2018: under 0.65 counts 0) |", "|---|---|---|---|",
             f"| out-of-fold ({e['n_out_of_fold']} images, "
             f"{'unflipped view only' if e.get('out_of_fold_views') == 1 else '4 flip views, as served'}) | "
             f"{ci(o['dice'])} | {ci(o['jaccard'])} | "
             f"{ci(o['threshold_jaccard'])} |",
             f"| held-out slice ({e['n_heldout']} images, shipped decoder, as served) | {ci(h['dice'])} | {ci(h['jaccard'])} | "
             f"{ci(h['threshold_jaccard'])} |", "",
             f"Training wall time on the CPU: {sum(v for k, v in wt.items() if k.startswith('fold')) / 60:.1f} min "
             f"for the 5 fold decoders, {wt.get('final', 0) / 60:.1f} min for the shipped one, "
             + (f"stage cache {wt['stage_cache'] / 60:.1f} min." if wt.get("stage_cache", 0) >= 60 else
                "the stage cache reused from an earlier run."),
             "The page measures the outline (area share, asymmetry, border irregularity and sharpness, colours): "
             "measurements, not the ABCD rule's scores and not a diagnosis."]
    att = e.get("attention") or {}
    if att.get("threshold") is not None:
        ratio = f" and a mean inside under {att['ratio_under']} times its mean outside" if att.get("ratio_under") else ""
        lines.append(f"Attention warning: a heatmap with under {att['threshold']:.0%} of its mass inside the outline"
                     f"{ratio} is flagged ({att['rule']}).")
    return "\n".join(lines) + "\n"


def trunk_lines(m: Manifest) -> str:
    """The Models section's line on what the members share: the one frozen trunk, or, for a kind
    whose members hold their whole network, that they share nothing."""
    whole = [k for k in MODEL_KEYS if m.member_split(k) == WHOLE_NETWORK]
    lines = []
    if m.needs_trunk:
        lines.append(f"""- One shared frozen trunk, `trunk.safetensors`: the ImageNet lower stages
  ({m.architecture['frozen_lower_stages']}, {m.architecture['imagenet_weights']}). It runs
  once per image; each member {'of ' + ', '.join(k for k in MODEL_KEYS if k not in whole) + ' ' if whole else ''}\
fine-tuned only the stages above it and its head.""")
    if whole:
        lines.append(f"- Whole-network members ({', '.join(whole)}): each file holds its whole network, fine-tuned "
                     "from the ImageNet weights, and runs its own trunk.")
    return "\n".join(lines)


def _second_source(record: dict | None) -> str:
    """The Data section's line on a second source the members trained on (train.fitting.cv --second-source)."""
    if not record:
        return ""
    classes = ", ".join(f"{k} {v}" for k, v in record["fit_by_class"].items())
    return (f"\nA second source: every member also trained on the fit half of `{record['halves_file']}` "
            f"(sha256 `{record['halves_sha256'][:12]}…`): {record['n_fit']} images of `{record['data']}` "
            f"({classes}), restored to {record['aspect'] or 'their stored'} aspect. None of them is scored out of "
            "fold, and every figure quoted for that folder comes from its held-out half, which no member trained on.\n")


def model_card(m: Manifest) -> str:
    models = m.models
    fus = models["fusion"]
    n_members = len(fus["members"])
    wt = m.training_wall_time_seconds
    held = fus.get("heldout_metrics", {})
    return f"""# Model card: HAM10000 skin-lesion classifiers (fusion and image-only ensembles)

Version {m.version}; trained from commit `{m.git_commit}`. Generated by `train/release/bundle.py`.

## Intended use
A **research and education demo**, not a medical device. It must not be used for
diagnosis, triage or any clinical decision. It shows how adding a patient's age, sex and
body site to a dermoscopic image changes a classifier's output, and explains both.

## Models
- Two ensembles of {n_members} members each, one member per fold of a {n_members}-fold lesion-grouped
  cross-validation: `fusion_fold*.safetensors` ({m.architecture['backbone']} + metadata
  {m.architecture['metadata_encoder']}, fused by **{fus['fusion']}**) and
  `image_only_fold*.safetensors` (the same recipe, image only).
{trunk_lines(m)}
- Ensemble rule: {fus['ensemble']}.
- Input: {m.input['spec']['width']}x{m.input['spec']['height']} px, {m.input['crop']},
  mean = std = 0.5; 4 flip views.
- Recipe: loss `{fus['config']['loss']}`, sampler `{fus['config']['sampler']}`, {fus['config']['epochs']}
  epochs on a fixed schedule (no epoch is chosen on held-out data), AdamW, one-cycle.
- Calibration: one temperature per ensemble, fitted on the out-of-fold logits of all
  images: T = {fus['temperature']:.3f} (fusion), {models['image_only']['temperature']:.3f} (image-only).
- Metadata: age standardised (mean {m.metadata['age_scaler']['mean']:.1f}, sd
  {m.metadata['age_scaler']['std']:.1f}) with a missing flag; sex and site one-hot with
  an `unknown` value. Missing values are normal inputs (trained with random dropping).

## Data
HAM10000: Tschandl P, Rosendahl C, Kittler H. "The HAM10000 dataset, a large collection of
multi-source dermatoscopic images of common pigmented skin lesions." Sci Data 5, 180161
(2018). Licence CC BY-NC 4.0 (non-commercial use, attribution required); the weights
inherit the non-commercial restriction. Images used at 200x150.
Folds: `{m.folds_file}` (sha256 `{m.folds_sha256[:12]}…`), grouped by `lesion_id`,
stratified by diagnosis, seed 0. Held out from every member: `{m.heldout_file}`
(sha256 `{m.heldout_sha256[:12]}…`, {held.get('n', 0)} images); the app's examples come from it.
{_second_source(m.second_source)}
## Out-of-fold evaluation (every image scored by the member that never saw its lesion)
{fus['out_of_fold_metrics']['n']} images. These figures are for single members (each image has one
out-of-fold member); the ensembles are expected to do somewhat better (next section).
Confidence intervals, paired tests, operating points and subgroups: `reports/report.md`.

{_table(models, 'out_of_fold_metrics')}

ECE before temperature: fusion {fus['out_of_fold_metrics']['ece_before_temperature']:.3f},
image-only {models['image_only']['out_of_fold_metrics']['ece_before_temperature']:.3f}.

Per class (out-of-fold):

{_per_class(models, 'out_of_fold_metrics')}

## Held-out slice: the shipped ensembles ({held.get('n', 0)} images no member trained on)
Scored through the app's own inference path. Small (4 df and 4 vasc images), so noisy.

{_table(models, 'heldout_metrics') if held else 'not scored'}

## Recipe variants compared (out-of-fold)
{_variants(m)}

## Training
- Command: `{fus['training_command']}`
- Wall time ({m.hardware}): feature cache {wt.get('feature_cache', 0):.0f} s, pooled ImageNet features
  {wt.get('pooled_imagenet', 0):.0f} s, curriculum ranking
  {sum(v for k, v in wt.items() if k.startswith('curriculum_rank')):.0f} s, fusion members
  {wt['fusion_members']:.0f} s, image-only members {wt['image_only_members']:.0f} s; total {wt['total'] / 60:.1f} min
  (wall time: it includes any time the machine was shared with other work or the run was paused).

{_other_clinics(m)}
{_ood(m)}
{_shift(m)}
{_skin_tone(m)}
{_archive(m)}
{_segmentation(m)}
{coverage_markdown(m.prediction_sets)}
## Limitations
- Dermoscopic images only; clinical (phone) photos are out of distribution.
- HAM10000 comes from two sites (Vienna, Queensland), mostly light skin types; performance
  on darker skin types is unknown and likely worse.
- Seven diagnostic classes only; other lesions will be forced into one of them.
- Rare classes (df, vasc, akiec) have few images, so their metrics are noisy.
- Metadata priors learned from HAM10000 (e.g. age, site distributions) may not transfer
  to other populations; the fusion model can be pushed by them.
- Calibration was fitted on this dataset's out-of-fold predictions of single members;
  probabilities elsewhere may be over- or under-confident.
"""

