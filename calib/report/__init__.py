"""Reports, one module per command (run, compare, sensitivity, and the fallback section of run),
each holding its markdown and HTML; they share only the HTML pieces (html.py), number formatting
(format.py), figures (plots.py) and the typed report dataclasses (schema.py). Renderers read a
report's JSON form. Nothing here imports a command: commands call their report module.
"""
