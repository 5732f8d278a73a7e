"""Training, evaluation and data scripts, grouped by stage; run as `python -m train.<stage>.<name>`.

- `train.data`: the dataset's layout, folds and splits, cached trunk features, augmentation,
  and the non-dermoscopic test images (synthetic and real photos).
- `train.fitting`: members, cross-validation, whole-network and multi-GPU training, the
  bundle of weights, the OOD check, prediction sets and publishing to the Hub.
- `train.evaluation`: metrics and statistics, `evaluate`, the report, heatmap localisation,
  benchmarks and the load test.
- `train.study`: the comparison of losses, samplers and fusions on frozen features.
"""
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SPLITS = REPO / "train" / "splits"   # committed folds and splits (data, not code)
