"""Explanations and evidence for an analysis, each module with the result type it makes: gradcam
(the heatmap methods), heatmaps (an analysis's maps from its kept features), shapley (exact Shapley
values of age, sex and site), what_if (the fusion model for other ages, sexes and sites), conformal
(prediction sets), ood (the out-of-distribution check), archive (similar confirmed cases), lesion
(the outline's measures and the attention check), shift (how unlike the training images), skin_tone
(the skin around the lesion) and clinical_report (the evaluation report's melanoma operating points
and subgroups).

May import classifier only; imported by analysis and the page.
"""
