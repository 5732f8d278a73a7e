"""train.release.recipe_cost: a bundle of another recipe's shape serves, and the command prints its
cost beside the shipped bundle's (figures are not asserted: the machine is shared)."""
import re

import torch

from lesion_app.analysis.predictor import Predictor
from lesion_app.classifier.manifest import Manifest
from train.release import recipe_cost


def test_a_lite2_bundle_of_the_recipes_shape_serves_and_the_command_prints_its_ratio(tmp_path, capsys):
    weights = recipe_cost.recipe_bundle("tf_efficientnet_lite2", 5, tmp_path / "lite2", n_members=2)
    m = Manifest.load(weights)
    assert m.backbone == "tf_efficientnet_lite2" and m.trunk["split_block"] == 5 and len(m.members("fusion")) == 2
    p = Predictor(weights, device=torch.device("cpu"))
    a = p.analyze(recipe_cost.load_upload(recipe_cost.EXAMPLE), *recipe_cost.METADATA)
    assert a.lesion is not None and a.fusion.cam.std() > 0
    assert recipe_cost.main(["--recipe", "tf_efficientnet_lite0:4", "--repeats", "1", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"shipped\s+\d\.\d{3}\s+1\.00x", out)
    assert re.search(r"tf_efficientnet_lite0:4\s+\d\.\d{3}\s+\d", out)
