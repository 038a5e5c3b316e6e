"""Evaluation of a challenger against the champion: walk-forward folds over time."""
