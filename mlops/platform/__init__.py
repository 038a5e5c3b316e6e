"""Platform operations shared by the management API (``app/routes/platform.py``) and the
console: typed, synchronous functions over the Prefect client and the MLflow client.

==========================  =========================================================
module                      operations
==========================  =========================================================
:mod:`.orchestration`       ``start_flow_run``, ``trigger_now``, ``flow_run_status``,
                            ``deployment_state``, ``pause_schedules``, ``resume_schedules``
:mod:`.models`              ``list_models``, ``model_versions``, ``model_version``,
                            ``promote``, ``rollback``, ``champion_history``
:mod:`.runs`                ``list_runs``, ``compare_runs``, ``best_run``
:mod:`.features`            ``feature_store_stats``
:mod:`mlops.errors`         the errors they raise (404 / 409 / 422 / 503 in the API);
                            :mod:`.errors` re-exports them for older imports
==========================  =========================================================

They are synchronous (MLflow's client is; Prefect's is used as ``get_client(sync_client=
True)``): the app calls them in a worker thread, the console directly. Clients come in
as arguments (``prefect_client(settings)`` builds Prefect's, ``mlops.registry.
mlflow_client(settings)`` MLflow's); nothing is built at import time.
"""
