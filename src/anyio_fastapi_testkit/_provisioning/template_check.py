"""The check of the template kept in the kit's cached cluster (``_postgres.cache``).

When a run builds the cached template, it records in the cache's marker what the template holds
(``record_template``: its tables' rows, the size of its indexes and sequences, see
``owned.database_summary``). The next run, on the reused cluster and before anything uses it,
keeps the template and its spares only if they still hold that, and drops every other database
(``check_cached_template``): leftovers of killed runs, and a template whose files were damaged,
which is then rebuilt. The template is not read again when its files are those that an earlier
check read (``ClusterCache.unchanged_template``): that check records them (``record_checked``).
``ClusterCache`` is given ``check_cached_template`` when it is made (see ``xdist.plan_run``):
the cache knows folders and markers, this module what a database holds.

The databases' modules are imported inside the functions: the xdist controller makes the
``ClusterCache`` at configure time, and imports neither psycopg nor SQLAlchemy before it starts
its workers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._core.errors import DatabaseError

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

    from .._postgres.cache import ClusterCache

TEMPLATE_RUN_ID = "cached template"  # in the cached template's ownership comment


def check_cached_template(cache: ClusterCache, admin_url: URL) -> None:
    """On a reused cluster, before the run uses it: keep the template (and its spares) only if
    it still holds what it held when it was built, and drop every other database: leftovers of
    killed runs, marked or not (the cluster is the kit's alone, under its lock). A template
    found changed or unreadable is dropped, to be rebuilt.

    Raises ``DatabaseError`` when that fails: the caller makes the cluster anew.
    """
    from .databases import ownership_comment
    from .owned import clean_own_cluster
    from .spares import spare_run_id

    marker = cache.marker
    if marker is None:
        return
    key = marker.template_key
    kept = clean_own_cluster(
        admin_url,
        template=marker.template_name if key is not None else None,
        template_mark=ownership_comment(TEMPLATE_RUN_ID),
        spare_mark=ownership_comment(spare_run_id(key)) if key is not None else None,
        expected=marker.template_check,
        unchanged=cache.unchanged_template(),
    )
    cache.dropped = kept.dropped
    cache.checked = kept.kept
    if kept.template_oid is not None:
        cache.record_checked(kept.template_oid)
    else:
        cache.set_template(None)


def record_template(cache: ClusterCache, key: str | None) -> None:
    """Record in the cache's marker that the template holds the schema with this ``key``, and
    what it holds, for the next run's check (None: a schema that cannot be told, never
    reused)."""
    if key is None:
        cache.set_template(None)
        return
    name, check = _template_summary(cache.admin_url)
    cache.set_template(key, name, check)


def _template_summary(admin_url: URL | None) -> tuple[str | None, dict[str, Any] | None]:
    """The cached template's name and summary; (None, None) if it cannot be read, so that
    the next run rebuilds it rather than trust it unchecked."""
    from .databases import ownership_comment
    from .owned import database_summary, marked_databases

    if admin_url is None:
        return None, None
    try:
        mark = ownership_comment(TEMPLATE_RUN_ID)
        names = [name for name, comment in marked_databases(admin_url).items() if comment == mark]
        if len(names) != 1:
            return None, None
        return names[0], database_summary(admin_url, names[0])
    except DatabaseError:
        return None, None
