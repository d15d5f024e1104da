"""Result analysis: collect ``results.json`` records into pandas, paper-style tables and plots.

Filled in by the analysis issue; the record format it reads is documented in README.md
("Reading results") and produced by :mod:`pruning.results`.
"""
