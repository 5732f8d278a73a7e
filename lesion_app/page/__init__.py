"""The page: ui (wires the components to the events, each defined once: a slip is a warning on the
page and an error through the API), layout (the components as a View, the page's texts and
styling), events (each event as a plain method: raw values in, a PageUpdate, the /report JSON or a
served file out), session (a browser session's memory), uploads (reading them into memory),
choices (the one parser of the page's choices), presentation (an Analysis -> Markdown and HTML),
clinical (the evaluation report's words), figures, case_report (the PDF of an analysis: its
sections, top to bottom), pdf_blocks (its platypus building blocks), reader ("Test yourself": a
reader's session and the tab's events), reader_deck (a deck from its code), reader_score (the
answers, the score, the CSV), reader_tab (its tab's layout and wiring) and slips (a user's slip on
the page: a warning toast, every output left as it was).

May import analysis, evidence, classifier and files; nothing imports the page but app.py.
"""
