"""Model version tag names: contracts between training, evaluation and serving.

Kept free of heavy imports so pure modules (gates, serving) can share them.
"""

from __future__ import annotations


class Tags:
    """Model version tag names (contracts: serving and evaluation read them)."""

    FEATURE_VIEWS = "feature_views"  # JSON list of "name@version"
    FEATURE_NAMES = "feature_names"  # JSON list, the ONNX input's column order
    ENTITY_KEY = "entity_key"
    DATA_WINDOW = "data_window"  # "<start>/<end>" ISO 8601
    ONNX_SHA256 = "onnx_sha256"
    TRAIN_FLOW_RUN_ID = "train_flow_run_id"
    GIT_SHA = "git_sha"
    PARITY_MAX_ABS_DIFF = "onnx_parity_max_abs_diff"
    GATE_DECISION = "gate.decision"  # promoted | rejected
    GATE_REASON = "gate.reason"
    GATE_ROC_AUC = "gate.roc_auc"
    GATE_CHAMPION_ROC_AUC = "gate.champion_roc_auc"
    GATE_MIN_ROC_AUC = "gate.min_roc_auc"
    GATE_MAX_REGRESSION = "gate.max_regression"
    # walk-forward evaluation (gate.roc_auc and gate.champion_roc_auc are then the means)
    GATE_FOLDS = "gate.folds"  # number of time folds
    GATE_FOLD_ROC_AUC = "gate.fold_roc_auc"  # comma-separated, oldest fold first
    GATE_CHAMPION_FOLD_ROC_AUC = "gate.champion_fold_roc_auc"  # same; empty without champion
    GATE_FOLDS_WORSE = "gate.folds_worse"  # "<lost>/<compared>" folds
    # why a version was trained by the retrain flow
    RETRAIN_REASON = "retrain_reason"  # event name, "schedule" or "manual"
    RETRAIN_FLOW_RUN_ID = "retrain_flow_run_id"
    RETRAIN_TRIGGER = "retrain_trigger"  # JSON of the triggering event's payload

    # what serving refuses to load a version without
    REQUIRED_FOR_SERVING = (ONNX_SHA256, FEATURE_NAMES, FEATURE_VIEWS, ENTITY_KEY)


class RunTags:
    """MLflow run tag names that tie a run to the Prefect flow run that opened it
    (contracts: :mod:`mlops.lifecycle` finds the runs a crashed flow left open by them)."""

    FLOW_RUN_ID = "mlops.flow_run_id"
    ROOT_FLOW_RUN_ID = "mlops.root_flow_run_id"  # the top of the flow run's subflow tree
    TERMINATED_BY = "mlops.terminated_by"  # "prefect:<state name>" when a hook ended it
    TERMINATED_REASON = "mlops.terminated_reason"
