from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from mlflow import MlflowClient
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.transactions import Transaction, get_transaction

from mlops.platform.models import CHAMPION_HISTORY, promotion_tags, push_champion_history
from mlops.registry import CHALLENGER, CHAMPION, promote, version_by_alias
from tasks.evaluation.retry import MLFLOW_RETRIES

logger = logging.getLogger(__name__)

_ALIASES_BEFORE = "aliases_before_promotion"


@dataclass(frozen=True)
class _AliasesBefore:
    """Where the aliases pointed before the promotion (None: no version had it), and the
    registered model's ``champion_history`` tag as it was (None: the model had none)."""

    client: MlflowClient
    name: str
    champion: str | None
    challenger: str | None
    history: str | None

    def __deepcopy__(self, memo: dict[int, object]) -> _AliasesBefore:
        # Transaction.get() deep-copies values: this record is immutable, and the client
        # (connection pools inside) is to be shared, not copied
        return self


@task(cache_policy=NO_CACHE, **MLFLOW_RETRIES)
def promote_version(client: MlflowClient, name: str, version: str, reason: str = "") -> str | None:
    """Move the ``champion`` alias to ``version``; returns the previous champion's version.
    The version gets the ``promotion.*`` tags the management API's promotion sets (by
    ``evaluate flow``, ``reason``: the gate's).

    The replaced champion goes onto the model's champion history (as the management API's
    promotion does), so :func:`mlops.platform.models.rollback` can undo this promotion.

    Inside a ``prefect.transactions.transaction()``, a failure later in the transaction
    rolls the promotion back: ``champion`` (and ``challenger``, which promotion removes
    from the promoted version) point where they did before, or nowhere if they did not,
    and the champion history is what it was.
    """
    champion = version_by_alias(client, name, CHAMPION)
    challenger = version_by_alias(client, name, CHALLENGER)
    previous = None if champion is None else str(champion.version)
    # Kept on the enclosing transaction: each try of this task runs in a transaction of
    # its own, and a retry must not take a half-done first try's aliases for "before".
    txn = get_transaction()
    outer = None if txn is None else txn.get_parent()
    if outer is not None and outer.get(_ALIASES_BEFORE, None) is None:
        outer.set(
            _ALIASES_BEFORE,
            _AliasesBefore(
                client,
                name,
                previous,
                None if challenger is None else str(challenger.version),
                (client.get_registered_model(name).tags or {}).get(CHAMPION_HISTORY),
            ),
        )
    if previous is not None and previous != str(version):
        push_champion_history(client, name=name, previous=previous)
    promote(client=client, name=name, version=version)
    tags = promotion_tags("promote", "evaluate flow", reason, datetime.now(UTC), previous)
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    return previous


@promote_version.on_rollback
def restore_aliases(txn: Transaction) -> None:
    """Put ``champion`` and ``challenger`` back where they were before the promotion, and
    the champion history as it was (the task's transaction reads the value from the
    enclosing one)."""
    before: _AliasesBefore | None = txn.get(_ALIASES_BEFORE, None)
    if before is None:
        return
    client, name = before.client, before.name
    for alias, version in ((CHAMPION, before.champion), (CHALLENGER, before.challenger)):
        if version is None:
            if version_by_alias(client, name, alias) is not None:
                client.delete_registered_model_alias(name, alias)
        else:
            client.set_registered_model_alias(name, alias, version)
    if before.history is not None:
        client.set_registered_model_tag(name, CHAMPION_HISTORY, before.history)
    elif CHAMPION_HISTORY in (client.get_registered_model(name).tags or {}):
        client.delete_registered_model_tag(name, CHAMPION_HISTORY)
    logger.warning(
        "promotion of %s rolled back: %s is version %s again, %s version %s",
        name,
        CHAMPION,
        before.champion or "(none)",
        CHALLENGER,
        before.challenger or "(none)",
    )
