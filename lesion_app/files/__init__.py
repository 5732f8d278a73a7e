"""What a user sends and gets back, so that nothing of a patient outlives the request:
image_input (an upload read into memory, its file deleted, checked and decoded), upload_dir
(the app's private folder, swept and removed on exit) and report_files (case-report PDFs and
the reader mode's answer CSVs, served once).

Imports no other group of the app; imported by the page and app.py.
"""
