"""The models and their artifacts: vocab (classes and metadata vocabulary), metadata (the
encoding), preprocess, models (the network and its heads), ensemble, manifest (the typed
weights/manifest.json, its only parser), weights (loading and checking the files), hub
(hf:// weights from the Hub cache), result (the Analysis dataclass every layer names) and
reader_cases (the held-out cases "Test yourself" shows, shipped beside the weights).

Imports no other group of the app; every group above may import it.
"""
