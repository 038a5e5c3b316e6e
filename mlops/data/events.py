"""A file of the user's own events made the source of a model spec's feature views.

``mlops import-events FILE`` and the console's Datasets page ("use as the events of a
model") both call :func:`import_events`: the file is read with the columns the views
and the label need (a missing column or a bad timestamp is a :class:`DataError` naming
the file and column) and written where ``materialize`` and ``train`` read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mlops.data.generate import write_events
from mlops.features.definition import Source
from mlops.features.source import read_events
from mlops.settings import Settings
from mlops.specs import get_spec


@dataclass(frozen=True)
class ImportedEvents:
    rows: int
    target: Path
    """The Parquet file the model spec's views and labels now read."""


def import_events(settings: Settings, path: Path, model: str = "fraud_detector") -> ImportedEvents:
    """Make the events in ``path`` (CSV or Parquet) the source of ``model``'s views.

    Nothing is written when the file lacks a column: the previous events stay."""
    spec = get_spec(model, settings)
    columns = list(dict.fromkeys([c for v in spec.views for c in v.source_columns] + [spec.label]))
    frame = read_events(Source.from_path(path), columns=columns, timestamp=spec.timestamp)
    target = Path(str(spec.labels.path))
    write_events(frame, target)
    return ImportedEvents(rows=len(frame), target=target)
