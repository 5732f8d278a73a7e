"""The page: ui (layout and wiring), events (events as plain functions -> a PageUpdate),
choices (the one parser of the page's choices), presentation (an Analysis -> Markdown and
HTML), clinical (the evaluation report's words: the Model report tab, melanoma flags, similar
patients), figures, case_report (the PDF of an analysis), reader ("Test yourself": decks, scoring, the
answers' CSV), reader_tab (its tab's layout and wiring) and slips (a user's slip on the page: a
warning toast, every output left as it was).

May import analysis, evidence, classifier and files; nothing imports the page but app.py.
"""
