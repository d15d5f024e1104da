"""Result analysis: collect ``results.json`` records into pandas, paper-style tables and plots.

The record format it reads is defined in :mod:`pruning.record` and documented field by field in
docs/results.md.
"""
