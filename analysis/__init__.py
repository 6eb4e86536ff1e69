"""The report: tables, figures and a written summary of sweep studies (`python -m analysis report`).

Reads studies from an Optuna storage without ever writing to it (`load`), aggregates trials into
cells with Wilson intervals (`stats`, `tables`), checks what could mislead a reader (`checks`),
words the findings (`summary`), draws seaborn figures (`figures`), estimates parameter importances
(`importance`) and writes HTML and Markdown (`render`, `report`). It knows nothing of training:
fitted curves are redrawn from stored parameters with `sweeps.model.predict_params`.
"""
