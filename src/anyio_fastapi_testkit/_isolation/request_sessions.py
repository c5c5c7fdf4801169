"""The sessions of the app's requests on a test's connection: each notes whether it wrote in
its transaction, so that closing one that only read keeps what others committed meanwhile.
"""

from __future__ import annotations

from typing import Final

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import ORMExecuteState, Session, SessionTransaction

# True on a request's session once it wrote (flushed, or executed anything but a SELECT) in
# its transaction; see close_request_session.
_WROTE: Final = "_testkit_wrote"
_REQUEST_CLASSES: dict[type[Session], type[Session]] = {}


def _note_flush(session: Session, flush_context: object) -> None:
    setattr(session, _WROTE, True)


def _note_execute(state: ORMExecuteState) -> None:
    if not state.is_select:
        setattr(state.session, _WROTE, True)


def _note_end(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:  # the session's own, not a begin_nested() inside it
        setattr(session, _WROTE, False)


def request_session_class(base: type[Session]) -> type[Session]:
    """``base`` (the app's ``sync_session_class``, else ``Session``) made to note whether a
    session wrote in its transaction; its events are those of this subclass only."""
    cls = _REQUEST_CLASSES.get(base)
    if cls is None:
        cls = type(f"Request{base.__name__}", (base,), {_WROTE: False, "__module__": __name__})
        event.listen(cls, "after_flush", _note_flush)
        event.listen(cls, "do_orm_execute", _note_execute)
        event.listen(cls, "after_transaction_end", _note_end)
        _REQUEST_CLASSES[base] = cls
    return cls


def _only_read(session: Session) -> bool:
    """Whether ``session`` is in a transaction in which it only read: nothing flushed or
    pending, nothing executed but SELECTs, no ``begin_nested()`` of its own left open."""
    return (
        session.in_transaction()
        and session.is_active
        and not session.in_nested_transaction()
        and not getattr(session, _WROTE, True)
        and not (session.new or session.deleted or session.dirty)
    )


async def close_request_session(session: AsyncSession) -> None:
    """Close a request's session. One that only read in its transaction has its savepoint
    released (a commit) rather than rolled back: the same for its own work, and it keeps what
    other sessions on the test's connection committed after the savepoint began (a background
    task's, a service's), which nothing of the request would undo in production."""
    __tracebackhide__ = True
    try:
        if _only_read(session.sync_session):
            await session.commit()
    finally:
        await session.close()


def close_sync_request_session(session: Session) -> None:
    """The sync twin of ``close_request_session``."""
    __tracebackhide__ = True
    try:
        if _only_read(session):
            session.commit()
    finally:
        session.close()
