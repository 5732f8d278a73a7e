"""The served app, grouped by the role each part plays in a request (imports nothing from train/).

Imports run one way, down this list; nothing imports a group above it:

    page        the page: layout and wiring, events, what an analysis shows, the case report
    analysis    the Predictor, which composes the classifier and the evidence into an Analysis
    evidence    explanations and evidence: heatmaps, Shapley values, prediction sets, the
                out-of-distribution check, similar cases, the clinical report's figures
    classifier  the models and their artifacts: vocabulary, metadata encoding, preprocessing,
                networks, ensembles, the manifest, weights and the Hub, the Analysis result type
    files       what a user sends and gets back: uploads read into memory and deleted, the
                app's private folder, case reports served once (imported by the page only)

paths (where the repository and this package lie) is below them all.
"""
