"""The one definition of the label set and the metadata vocabulary.

Training, evaluation and the app import these; nothing restates them.
"""

# Class order of every logit vector, probability vector and CSV column.
CLASSES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")

CLASS_NAMES = {
    "akiec": "Actinic keratosis / intraepithelial carcinoma",
    "bcc": "Basal cell carcinoma",
    "bkl": "Benign keratosis",
    "df": "Dermatofibroma",
    "mel": "Melanoma",
    "nv": "Melanocytic nevus",
    "vasc": "Vascular lesion",
}

# HAM10000's `sex` column; "unknown" is a normal input, not an error.
SEXES = ("male", "female", "unknown")

# HAM10000's 15 anatomical sites plus "unknown" (the `localization` column).
SITES = (
    "abdomen", "acral", "back", "chest", "ear", "face", "foot", "genital",
    "hand", "lower extremity", "neck", "scalp", "trunk", "upper extremity",
    "unknown",
)

UNKNOWN = "unknown"
AGE_RANGE = (0.0, 120.0)


def class_label(code: str) -> str:
    """'mel' -> 'Melanoma (mel)': how the app names a class."""
    return f"{CLASS_NAMES[code]} ({code})"
