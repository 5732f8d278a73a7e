"""The clinical evaluation report (written by `python -m train.evaluation.report`) as the app uses it:
its files, the melanoma operating points and the subgroup rows (their words are the page's:
lesion_app.page.clinical)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..paths import REPO

REPORTS_DIR = REPO / "reports"
AGE_BANDS = [(0, 30, "<30"), (30, 45, "30-44"), (45, 60, "45-59"), (60, 75, "60-74"), (75, 200, "75+")]
SPECIFICITIES = ("90", "95")
# The UI's operating-point choices -> the report's specificity keys.
OPERATING_POINTS = {f"{s}% specificity": s for s in SPECIFICITIES}


def age_band(age) -> str:
    """The report's age bands; 'missing' when no age was entered."""
    if age is None or pd.isna(age):
        return "missing"
    return next(name for lo, hi, name in AGE_BANDS if lo <= age < hi)


@dataclass
class ClinicalReport:
    data: dict
    folder: Path
    matches_weights: bool

    @classmethod
    def load(cls, model_info: dict, folder: Path = REPORTS_DIR) -> "ClinicalReport | None":
        path = Path(folder) / "report.json"
        if not path.is_file():
            return None
        data = json.loads(path.read_text())
        return cls(data, Path(folder), data.get("weights", {}).get("sha256") == model_info["sha256"])

    def melanoma_flags(self, p_mel: dict[str, float], specificity: str) -> dict[str, dict]:
        """Per model (p_mel: kind -> its P(mel)): P(mel), the out-of-fold threshold for this
        specificity, and whether it crosses."""
        out = {}
        for key, p in p_mel.items():
            op = self.data["models"][key]["melanoma_operating_points"][specificity]
            out[key] = {"p_mel": p, "threshold": op["threshold"], "flagged": p >= op["threshold"],
                        "sensitivity": op["sensitivity"], "specificity": op["specificity"]}
        return out

    def subgroup_rows(self, metadata: dict) -> dict[str, dict | None]:
        """The out-of-fold rows for this patient's age band, sex and site."""
        wanted = {"age": age_band(metadata["age"]), "sex": metadata["sex"], "site": metadata["site"]}
        return {key: next((r for r in self.data["subgroups"][key]["rows"] if r["group"] == value), None)
                for key, value in wanted.items()}
