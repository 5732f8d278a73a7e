"""The analysis: loading.load_served builds what the app serves from a weights folder, once;
pipeline.analyse composes the classifier's passes and the evidence into one analysis.Analysis
(image(s) + metadata -> passes -> features -> each piece of evidence), in one short function;
predictor.Predictor serves it behind one lock, with the batch toolbox train/ uses; reading says
the result in the one sentence /report and the page share.

May import evidence and classifier; imported by the page (and by train/ and app.py).
"""
