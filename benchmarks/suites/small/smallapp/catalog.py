"""The app's slow import, simulated with real work of the kind big apps do at import.

Large FastAPI apps spend their start-up building pydantic models (hundreds of request and
response schemas, each compiled by pydantic-core) and their routes. This module does the same
work for real: it builds ``BENCH_IMPORT_MODELS`` models of 12 typed, validated fields each
(default 1500, about 2-3 s on the 2-core reference machine) and validates one instance of
each. Nothing is slept or spun: the cost scales with the machine's speed like a real import.
"""

from __future__ import annotations

import os
from datetime import datetime
from decimal import Decimal

from pydantic import BaseModel, Field, create_model

COUNT = int(os.environ.get("BENCH_IMPORT_MODELS", "1500"))

_FIELD_TYPES = (
    (str, Field(min_length=1, max_length=200)),
    (int, Field(ge=0)),
    (Decimal, Field(max_digits=12, decimal_places=2)),
    (datetime, ...),
    (list[str], Field(default_factory=list)),
    (dict[str, int], Field(default_factory=dict)),
)
_SAMPLE = {
    str: "x",
    int: 1,
    Decimal: "1.50",
    datetime: "2026-01-01T00:00:00",
    list[str]: ["a"],
    dict[str, int]: {"a": 1},
}

MODELS: list[type[BaseModel]] = []
for _i in range(COUNT):
    _fields = {f"field_{_j}": _FIELD_TYPES[(_i + _j) % len(_FIELD_TYPES)] for _j in range(12)}
    _model = create_model(f"Schema{_i}", **_fields)  # type: ignore[call-overload]
    _model.model_validate({name: _SAMPLE[spec[0]] for name, spec in _fields.items()})
    MODELS.append(_model)
