"""The served app, grouped by the role each part plays in a request (imports nothing from train/).

Imports run one way, down this list; nothing imports a group above it:

    page        the page: layout, its events (each defined once) and their wiring, what an
                analysis shows, the case report, "Test yourself"
    analysis    what the app serves, loaded once; the pipeline that composes the classifier's
                passes and the evidence into an Analysis; the Predictor that serves both
    evidence    explanations and evidence, each with its result type: heatmaps, Shapley values,
                what-if, prediction sets, the out-of-distribution check, similar cases, the
                lesion's outline measures, shift and skin tone, the clinical report's figures
    classifier  the models and their artifacts: vocabulary, metadata (parsed once), preprocessing,
                networks, ensembles and their passes, the manifest, weights and the Hub
    files       what a user sends and gets back: uploads read into memory and deleted, the
                app's private folder, case reports served once (imported by the page only)

paths (where the repository and this package lie) is below them all.
"""
