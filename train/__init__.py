"""Training, evaluation and data scripts, grouped by stage; run as `python -m train.<stage>.<name>`.
Stages depend one way, data -> fitting -> evaluation -> release: a later stage reads an earlier
stage's artifacts, and no stage imports a later one.

- `train.data`: the dataset's layout, folds and splits, cached trunk features, augmentation,
  and the non-dermoscopic test images (synthetic and real photos).
- `train.fitting`: the training recipe (`recipe`), members, cross-validation, whole-network and
  multi-GPU training, and the lesion segmenter's decoders.
- `train.evaluation`: metrics and statistics, `evaluate`, the report, heatmap localisation,
  lesion measures and attention, melanoma errors, benchmarks and the load test.
- `train.release`: whether a run ships (its members on another clinic's folder) and what ships
  beside the members: the bundle of weights and its model card, the OOD check, the shift score,
  the skin-tone reference, prediction sets, the similar-cases archive, the segmenter, the reader
  mode's cases, the recipe's cost, and publishing to the Hub.
- `train.study`: the comparison of losses, samplers and fusions on frozen features.
"""
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SPLITS = REPO / "train" / "splits"   # committed folds and splits (data, not code)
