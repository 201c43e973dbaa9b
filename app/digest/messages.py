"""The managers' daily digest as Slack shows it: the message's text and its Block Kit."""

from __future__ import annotations

from datetime import timedelta
from zoneinfo import ZoneInfo

from slack_sdk.models.blocks import (
    Block,
    ContextBlock,
    HeaderBlock,
    MarkdownTextObject,
    PlainTextObject,
    SectionBlock,
)

from app.blockkit import SLACK_SHOWS, Names, escape, inert, words
from app.digest.service import Digest
from app.lifecycle.snapshots import RequestSnapshot
from app.policy.durations import format_duration
from app.reviews.messages import review_line
from app.wording import day_time, listed, plural


def digest_text(digest: Digest) -> str:
    """The message's text (its notification, and what a client without blocks shows)."""
    return (
        f"WardKey daily digest for {digest.day:%d %b}: "
        f"{plural(len(digest.break_glass), 'break-glass use')}, "
        f"{plural(len(digest.overdue_reviews), 'overdue review')}"
    )


def _short(value: timedelta) -> str:
    seconds = value.total_seconds()
    return f"{seconds:.0f}s" if seconds < 60 else format_duration(value)


def digest_blocks(digest: Digest, zone: ZoneInfo, names: Names = SLACK_SHOWS) -> list[Block]:
    """The managers' daily summary: break-glass, overdue reviews, approval speed, failures,
    and who held access longest and most often."""

    def lines(items: list[str], empty: str) -> str:
        return "\n".join(f"• {i}" for i in items) if items else empty

    def who(view: RequestSnapshot) -> str:
        return names.person(view.requester, view.requester_slack_id)

    glass = [
        f"#{e.view.id} {who(e.view)} `{e.view.target}:{e.view.role}` "
        f"for {format_duration(e.held)}: “{inert(e.view.reason)[:150]}” · "
        f"{review_line(e.view, zone, names)}"
        for e in digest.break_glass
    ]
    overdue = [
        f"#{v.id} {who(v)} `{v.target}:{v.role}` (due "
        f"{day_time(v.review.due_at if v.review else None, zone)})"
        for v in digest.overdue_reviews
    ]
    latency = [
        f"{p.path}: p50 {_short(p.p50)}, p95 {_short(p.p95)} ({p.decisions} decided)"
        for p in digest.latency
    ]
    failures = [
        f"#{v.id} `{v.target}:{v.role}` for {escape(v.account)}: "
        f"{plural(v.revoke_attempts, 'attempt')}"
        for v in digest.revoke_failures
    ]
    longest = [
        f"#{e.view.id} {who(e.view)} `{e.view.target}:{e.view.role}` {format_duration(e.held)}"
        for e in digest.longest
    ]
    frequent = [
        f"{names.person(key)}: {plural(count, 'elevation')}" for key, count in digest.most_frequent
    ]
    window = f"{day_time(digest.since, zone)} to {day_time(digest.until, zone)}"
    budgets, flagged = _break_glass_day(digest, names)
    sections = [
        ("Break-glass uses", lines(glass, "None.")),
        ("Break-glass budgets used", lines(budgets, "None used.")),
        ("Break-glass flags raised", lines(flagged, "None.")),
        ("Overdue reviews", lines(overdue, "None.")),
        ("Approval latency per path", lines(latency, "No decisions.")),
        (
            "Revoke failures",
            lines(failures, "None outstanding.")
            + f"\n{plural(digest.failed_revoke_attempts, 'failed revoke attempt')} in the window.",
        ),
        ("Longest elevations", lines(longest, "None.")),
        ("Most frequent", lines(frequent, "None.")),
    ]
    blocks: list[Block] = [
        HeaderBlock(text=PlainTextObject(text=f"WardKey daily digest, {digest.day:%a %d %b}")),
        ContextBlock(
            elements=[
                MarkdownTextObject(text=f"{window} · {plural(digest.granted, 'grant')} given")
            ]
        ),
    ]
    for title, body in sections:
        blocks.append(SectionBlock(text=words(f"*{title}*\n{body}"[:2990])))
    return blocks


def _break_glass_day(digest: Digest, names: Names) -> tuple[list[str], list[str]]:
    """The digest's break-glass budget lines (each person and limited group, against its
    daily limits, and how many uses needed a second person) and its flag lines."""
    day = digest.break_glass_day
    if day is None:
        return [], []
    budgets = []
    for b in day.budgets:
        who = f"{escape(b.who)} (group)" if b.group else names.person(b.who, b.slack_id)
        limits = [
            *([f"{b.uses_limit} a day"] if b.uses_limit is not None else []),
            *([f"{format_duration(b.time_limit)} a day"] if b.time_limit is not None else []),
        ]
        budgets.append(
            f"{who}: {plural(b.uses, 'use')}, {format_duration(b.held)}"
            + (f" (limit {listed(limits)})" if limits else " (no limit set)")
        )
    if day.held:
        budgets.append(
            f"{plural(day.held, 'use')} needed a second person; {day.confirmed} confirmed."
        )
    flags = [
        f"#{f.request_id} {names.person(f.requester, f.slack_id)}: ⚑ {inert(f.words)}"
        for f in day.flags
    ]
    return budgets, flags
