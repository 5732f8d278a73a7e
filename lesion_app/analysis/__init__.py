"""The analysis: predictor.Predictor runs both ensembles on an image (or several of one lesion)
and composes their probabilities with the evidence into one analysis.Analysis.

May import evidence and classifier; imported by the page (and by train/ and app.py).
"""
