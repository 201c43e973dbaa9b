"""Slack's last answer about each person who used WardKey, kept in the database
(`slack_profiles`), so their clicks and commands are still done while Slack's Web API fails
(app/directory.py decides when one may be used)."""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import SQLAlchemyError

from app.clock import Clock, SystemClock
from app.directory import KEPT_PROFILE_USED_FOR, SlackProfile
from app.store import Database
from app.store.models import KeptSlackProfile

log = logging.getLogger(__name__)


class KeptProfiles:
    # Only answers under a day old are ever used (app/directory.py): older ones are deleted,
    # looked for at most once an hour, so the table holds no more about staff than it needs.
    KEPT_FOR = KEPT_PROFILE_USED_FOR
    PURGE_EVERY = timedelta(hours=1)

    def __init__(self, db: Database, clock: Clock | None = None) -> None:
        self.db = db
        self.clock = clock or SystemClock()
        self._purged_at: datetime | None = None

    def keep(self, profile: SlackProfile) -> None:
        """Slack's answer now; a failure to keep it is logged, never raised (the answer
        itself is good)."""
        insert = sqlite_insert if self.db.is_sqlite else pg_insert
        row = {
            "user_id": profile.user_id,
            "profile": json.dumps(profile.to_json()),
            "seen_at": self.clock.now(),
        }
        statement = insert(KeptSlackProfile).values(row)
        statement = statement.on_conflict_do_update(
            index_elements=[KeptSlackProfile.user_id],
            set_={"profile": statement.excluded.profile, "seen_at": statement.excluded.seen_at},
        )
        now = self.clock.now()
        purge = self._purged_at is None or now - self._purged_at >= self.PURGE_EVERY
        try:
            with self.db.transaction() as session:
                session.execute(statement)
                if purge:
                    session.execute(
                        delete(KeptSlackProfile).where(
                            KeptSlackProfile.seen_at < now - self.KEPT_FOR
                        )
                    )
        except SQLAlchemyError as exc:
            log.warning("event=slack_profile_not_kept error=%s", type(exc).__name__)
            return
        if purge:
            self._purged_at = now

    def recall(self, user_id: str, within: timedelta) -> SlackProfile | None:
        """Slack's last answer about `user_id` if it is younger than `within`."""
        try:
            with self.db.read() as session:
                row = session.execute(
                    select(KeptSlackProfile.profile, KeptSlackProfile.seen_at).where(
                        KeptSlackProfile.user_id == user_id
                    )
                ).first()
        except SQLAlchemyError as exc:
            log.warning("event=slack_profile_unreadable error=%s", type(exc).__name__)
            return None
        if row is None or self.clock.now() - row.seen_at > within:
            return None
        return SlackProfile.from_json(json.loads(row.profile))
