"""Settings from the environment (docs/configuration.md lists each, with its default)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    database_url: str = Field(
        default="sqlite:///wardkey.db",
        description="SQLAlchemy URL; a SQLite file in the working directory by default.",
    )
    wardkey_policy: str = Field(
        default="policy.yaml", description="Path to the policy manifest (YAML)."
    )
    wardkey_policy_check_seconds: float = Field(
        default=5.0,
        gt=0,
        description="How often each process looks at the policy file for a change (one stat; "
        "the file is read only when it changed). SIGHUP reloads it at once.",
    )
    slack_bot_token: str | None = None
    slack_signing_secret: str | None = None
    slack_app_token: str | None = None
    slack_api_url: str = "https://slack.com/api/"
    slack_team_ids: str = Field(
        default="",
        description="The Slack workspace IDs (T…, comma-separated) whose people may use WardKey; "
        "empty: only the workspace the bot token belongs to (auth.test at start-up).",
    )
    slack_enterprise_id: str | None = Field(
        default=None,
        description="An Enterprise Grid org ID (E…) whose every workspace may use WardKey; "
        "unset: none beyond SLACK_TEAM_IDS.",
    )
    wardkey_sweep_seconds: float = Field(
        default=15.0, gt=0, description="How often the warn, escalate, review and retry sweeps run."
    )
    wardkey_expiry_sweep_seconds: float = Field(
        default=1.0,
        gt=0,
        description="How often the expiry sweep looks for grants whose time is up (a cheap "
        "index range scan over the due rows only).",
    )
    wardkey_lease_seconds: float = Field(
        default=10.0,
        gt=0,
        description="How long a worker's claim on a grant or revoke in progress lasts unless "
        "renewed: the worker renews it every third of this while it calls the target, so a "
        "crashed worker's claim is taken over this long after its last renewal.",
    )
    wardkey_takeover_seconds: float = Field(
        default=2.0,
        gt=0,
        description="How often a worker looks for claims whose lease ran out (a crashed "
        "worker's grants and revokes) and takes them over.",
    )
    wardkey_probe_seconds: float = Field(
        default=5.0,
        gt=0,
        description="How often a target with failed revokes is asked a cheap question (is this "
        "access there?); when it answers again, its failed revokes are retried at once.",
    )
    wardkey_target_concurrency: int = Field(
        default=4,
        gt=0,
        le=64,
        description="Revokes a worker runs at once on each target: every target has its own "
        "threads, so a slow or hung target never delays another's.",
    )
    wardkey_db_connect_timeout_seconds: float = Field(
        default=5.0,
        gt=0,
        le=120,
        description="Connecting to PostgreSQL gives up after this long (a server that accepts "
        "and never answers fails a command in seconds, not never).",
    )
    wardkey_db_statement_timeout_seconds: float = Field(
        default=30.0,
        ge=0,
        description="PostgreSQL ends any one statement that runs longer (0: no limit).",
    )
    wardkey_checkpoint_key: str | None = Field(
        default=None,
        description="Secret for signing audit checkpoints (HMAC-SHA256); keep it off this box "
        "too, with whoever verifies.",
    )
    wardkey_checkpoint_dir: str | None = Field(
        default=None,
        description="Where signed checkpoints are written on a schedule: a mount of another "
        "machine or a write-once store, so a cut-off tail is found off the box.",
    )
    wardkey_checkpoint_seconds: float = Field(
        default=300.0, gt=0, description="How often a signed checkpoint is written."
    )
    wardkey_metrics_token: str | None = Field(
        default=None,
        description="/metrics answers only requests with `Authorization: Bearer` and this "
        "token; unset, /metrics is off (403) unless WARDKEY_METRICS_PUBLIC is true.",
    )
    wardkey_metrics_public: bool = Field(
        default=False,
        description="Serve /metrics to anyone when no token is set (only behind a network that "
        "keeps strangers out).",
    )
    wardkey_max_body_bytes: int = Field(
        default=1024 * 1024,
        gt=0,
        le=16 * 1024 * 1024,
        description="The largest request body /slack/events reads; larger ones get 413 unread.",
    )
    wardkey_public_url: str | None = Field(
        default=None,
        description="The https:// address people reach this WardKey at (e.g. "
        "https://wardkey.trust.nhs.uk): step-up sign-in links and the identity provider's "
        "redirect URI (<this>/step-up/callback) are made from it. Needed when a path has "
        "step_up.",
    )
    wardkey_worker_nice: int = Field(
        default=10,
        ge=0,
        le=19,
        description="How much lower a `wardkey worker` sets its own CPU priority (Unix nice, "
        "0-19) at start. On a host it shares with `serve` (and the database), Slack's acks come "
        "first and the work after them, already recorded, waits; alone on its host it loses "
        "nothing. 0 leaves it as started.",
    )
    wardkey_intake_work: Literal["local", "worker"] = Field(
        default="local",
        description="Who does the work after Slack is acknowledged (every request is recorded "
        "in the database first either way): `local`, the `wardkey serve` process that "
        "acknowledged it; `worker`, the `wardkey worker` processes (serve only records and "
        "acknowledges, so acks stay fast under load). A request no worker takes within 10 s "
        "is done by serve.",
    )
