"""The report for people and for spreadsheets: an HTML page with inline SVG charts, a CSV.

``page`` lays out the page, ``charts`` draws each chart (on ``figures``, the matplotlib
plumbing), ``format`` prints the numbers, ``versions`` says which model ran when,
``csv_export`` writes the exchange table.
The figures themselves come from ``feedback_store.report``.
"""

from middleware.reporting.csv_export import render_csv
from middleware.reporting.page import learning_verdict, render_html

__all__ = ["learning_verdict", "render_csv", "render_html"]
