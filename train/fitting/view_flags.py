"""The flags that say what a run's images look like, shared by train.fitting.cv (CPU, cached views)
and train.fitting.gpu_cv (views drawn on the device): the kind of training views, and the app's
input spec it trains and serves under (issue 37: colour constancy, the field of view, the source
width). Both record them the same way, so train.release.bundle serves the spec a run trained on."""
from __future__ import annotations

import argparse

from lesion_app.classifier.preprocess import InputSpec
from train.data.augment import CARRY_AUGMENT, Carry
from train.data.features import VIEW_KINDS


def add_view_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--views", default="flips", choices=VIEW_KINDS,
                   help="the training views: flips (the shipped recipe's) or carry (also other devices' looks: "
                        "another light, zoom, rotation, a round black field of view, lower resolution, JPEG; issue 37)")
    p.add_argument("--colour-constancy", type=float, default=0.0, metavar="P",
                   help="Shades-of-Gray colour constancy with this p at training and serving (0: off; 6 as ISIC 2019's winner)")
    p.add_argument("--field-of-view", action="store_true",
                   help="crop a dermatoscope's black frame at training and serving")
    p.add_argument("--source-width", type=int, default=None,
                   help="bring wider inputs down to this width first (the training images': 200)")


def input_spec_of(a: argparse.Namespace) -> InputSpec:
    """The app's input spec the flags ask for (the default spec when none is given)."""
    return InputSpec(source_width=a.source_width, field_of_view=a.field_of_view, colour_constancy=a.colour_constancy)


def views_record(kind: str, spec: InputSpec) -> dict:
    """What cv.json records of the views and the input (bundle reads input_spec)."""
    return {"input_spec": spec.to_dict(), "views": kind,
            **({"carry_views": {"augment": CARRY_AUGMENT.to_dict(), "carry": Carry().to_dict()}}
               if kind == "carry" else {})}
