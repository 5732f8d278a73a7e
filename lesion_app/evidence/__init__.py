"""Explanations and evidence for an analysis: gradcam (heatmaps), shapley (exact Shapley
values of age, sex and site), conformal (prediction sets), ood (the out-of-distribution
check), archive (similar confirmed cases) and clinical_report (the report's melanoma
operating points and subgroups).

May import classifier only; imported by analysis and the page.
"""
