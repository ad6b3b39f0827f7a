"""Durable state shared by signaling and hq_console: SQLAlchemy 2 models, engine, migrations.

SQLite (file) by default, PostgreSQL by URL. The schema is owned by the Alembic
migrations in ``shared/store/migrations``; ``migrate(url)`` brings a database to head.
"""

from shared.store.db import create_engine, migrate, session_factory
from shared.store.models import (
    Base,
    Booth,
    CallSession,
    ConsoleSession,
    Department,
    HelpRequest,
    SessionEvent,
    SignalingLeader,
    Site,
    Staff,
    StaffSkill,
)

__all__ = [
    "Base",
    "Booth",
    "CallSession",
    "ConsoleSession",
    "Department",
    "HelpRequest",
    "SessionEvent",
    "SignalingLeader",
    "Site",
    "Staff",
    "StaffSkill",
    "create_engine",
    "migrate",
    "session_factory",
]
