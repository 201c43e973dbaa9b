"""Alembic, driven from code so `wardkey db upgrade` needs no alembic.ini in the working dir."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import URL

from app.store.db import normalise_url

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(url: str | URL) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option(
        "sqlalchemy.url",
        normalise_url(url).render_as_string(hide_password=False).replace("%", "%%"),
    )
    return config


def upgrade(url: str | URL, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)
