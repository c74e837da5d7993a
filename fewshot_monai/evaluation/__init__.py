"""Evaluation of few-shot segmentation: metrics, folds, protocols, runner, reports and the registration baseline.

Submodules are imported on demand; ``registration_worker`` must stay importable without torch.
"""
