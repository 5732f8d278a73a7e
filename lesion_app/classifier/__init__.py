"""The models and their artifacts: vocab (classes and metadata vocabulary), metadata (Metadata: the
one parser of age, sex and site, and the encoding), preprocess, models (the network and its heads),
ensemble, manifest (the typed weights/manifest.json, its only parser), weights (loading and checking
the files), hub (hf:// weights from the Hub cache), frozen (the shared trunk and the frozen ImageNet
stages the segmenter and the OOD check read, run once per analysis), passes (both ensembles' passes
over a batch of images, and the ImageFeatures an analysis keeps of them), segmenter (the lesion
outline's decoder) and reader_cases (the held-out cases "Test yourself" shows, shipped beside the
weights).

Imports no other group of the app; every group above may import it.
"""
