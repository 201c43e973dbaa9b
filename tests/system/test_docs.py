"""The documentation: the site builds with `mkdocs build --strict` (a broken link, a missing
anchor, a policy field without an explanation or a note for a field that no longer exists fails
it), the README stays short with every relative link resolving, its test command is the one CI
runs, and the configuration page names every setting the code reads."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from app.config import Settings
from app.policy.model import (
    EntraGroup,
    IdentityProvider,
    JiraSystem,
    LdapGroup,
    OpsgenieSource,
    PagerDutySource,
    RosterSource,
    ServiceNowSystem,
    Target,
)
from tests.conftest import HERE

ROOT = HERE.parent
README = ROOT / "README.md"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def mkdocs_or_skip() -> None:
    missing = [m for m in ("mkdocs", "material") if importlib.util.find_spec(m) is None]
    if missing:
        why = (
            f"{' and '.join(missing)} not installed: pip install -e '.[dev]' brings mkdocs and "
            "mkdocs-material"
        )
        if IN_CI:
            pytest.fail(why)
        pytest.skip(why)


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    mkdocs_or_skip()
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    said = [
        line
        for line in (built.stdout + built.stderr).splitlines()
        if line.startswith(("WARNING", "ERROR")) or "Error" in line
    ]
    assert built.returncode == 0, "\n".join(said) or built.stderr[-3000:]
    # The generated pages were generated, not left as their markers.
    reference = (tmp_path / "policy-reference" / "index.html").read_text(encoding="utf-8")
    assert "policy-reference --&gt;" not in reference and "<!-- policy-reference" not in reference
    for field in ("max_duration", "approval_sla", "security_alerts", "contract_end"):
        assert f"<code>{field}</code>" in reference, field
    cli = (tmp_path / "cli" / "index.html").read_text(encoding="utf-8")
    assert "usage: wardkey audit verify" in cli and "usage: wardkey policy schema" in cli
    # The example policy and deploy/README.md are included, not copied.
    policy = (tmp_path / "policy" / "index.html").read_text(encoding="utf-8")
    assert "Northshire Hospitals NHS Foundation Trust" in policy
    deployment = (tmp_path / "deployment" / "index.html").read_text(encoding="utf-8")
    assert "why kustomize, not a Helm chart" in deployment


def test_the_readme_is_short() -> None:
    size = len(README.read_text(encoding="utf-8"))
    assert size <= 10_000, f"README.md is {size:,} characters; move detail into docs/"


def test_every_relative_link_in_the_readme_resolves() -> None:
    text = README.read_text(encoding="utf-8")
    links = LINK.findall(text)
    assert len(links) >= 10
    broken = []
    for link in links:
        if re.match(r"^[a-z][a-z0-9+.-]*:", link):  # https:, mailto:
            continue
        path, _, anchor = link.partition("#")
        file = (ROOT / path) if path else README
        if not file.exists() or (anchor and file.suffix == ".md" and anchor not in anchors(file)):
            broken.append(link)
    assert broken == [], broken


def anchors(markdown_file: Path) -> set[str]:
    """Heading anchors as GitHub and MkDocs make them (`{ #id }` where one is given)."""
    found = set()
    for line in markdown_file.read_text(encoding="utf-8").splitlines():
        heading = re.match(r"^#{1,6}\s+(.*?)\s*$", line)
        if not heading:
            continue
        title = heading.group(1)
        given = re.search(r"\{\s*#([\w-]+)\s*\}\s*$", title)
        if given:
            found.add(given.group(1))
            continue
        slug = re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")
        found.add(slug)
    return found


def test_the_readme_test_command_is_the_one_ci_runs() -> None:
    """.ci/run runs "the README's test command": the two must not drift apart."""
    readme = README.read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    section = readme.split("## Set up and test", 1)[1].split("\n## ", 1)[0]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0].splitlines()
    assert block == [
        "python3 -m venv .venv && . .venv/bin/activate && pip install -e '.[dev]'",
        "pytest",
    ]
    assert "python -m pip install -q -e '.[dev]'" in ci
    assert re.search(r"^pytest$", ci, re.MULTILINE), ".ci/run no longer runs plain pytest"


def test_every_test_file_ci_runs_again_at_other_instants_exists() -> None:
    """.ci/run names the clock-sensitive test files; one moved away would fail CI, not here."""
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    listed = ci.split("calendar_tests=(", 1)[1].split(")", 1)[0].split()
    assert listed, ".ci/run no longer lists the clock-sensitive tests"
    missing = [name for name in listed if not (ROOT / name).is_file()]
    assert missing == [], f".ci/run names test files that are not there: {missing}"


def test_the_configuration_page_names_every_setting_the_code_reads() -> None:
    page = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    read = {name.upper() for name in Settings.model_fields}
    # os.environ["X"], os.environ.get("X") and env.get("X") on a copy of it (app/healthcheck.py)
    looked_up = re.compile(r"""\b(?:os\.environ|env)(?:\.get\(|\[)\s*["']([A-Z][A-Z0-9_]*)["']""")
    for source in (ROOT / "app").rglob("*.py"):
        read |= set(looked_up.findall(source.read_text(encoding="utf-8")))
    assert {"DATABASE_URL", "PORT", "WARDKEY_OUTBOX_THREADS", "WARDKEY_HEALTHCHECK_URL"} <= read
    missing = sorted(name for name in read if f"`{name}`" not in page)
    assert missing == [], f"docs/configuration.md does not describe {missing}"


def test_the_deployment_page_includes_deploy_readme_after_its_title() -> None:
    """docs/deployment.md includes deploy/README.md from its second line, under its own title."""
    first = (ROOT / "deploy" / "README.md").read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("# "), first
    assert '--8<-- "deploy/README.md:2"' in (ROOT / "docs" / "deployment.md").read_text()


def test_the_readme_sections_the_code_points_to_exist() -> None:
    """`wardkey demo` ends with "then README.md “Running the Slack app”": that section must be
    there."""
    headings = {
        line.lstrip("#").strip()
        for line in README.read_text(encoding="utf-8").splitlines()
        if line.startswith("#")
    }
    pointed = re.findall(r'README\.md[\s"]*“([^”]+)”', (ROOT / "app/demo/run.py").read_text())
    assert pointed and set(pointed) <= headings, pointed


INSECURE = (
    "`insecure: true` on a target, rota source, directory group, ticket system or identity provider"
)


def test_the_readme_security_section_lists_each_setting_with_its_real_default() -> None:
    """The settings that loosen what WardKey refuses are in the README with their defaults, and
    the defaults it states are the code's."""
    readme = README.read_text(encoding="utf-8")
    assert "\n## Security\n" in readme, "README.md has no Security section"
    section = readme.split("\n## Security\n", 1)[1].split("\n## ", 1)[0]
    rows = {
        row.split("|")[1].strip(): row.split("|")[2].strip()
        for row in section.splitlines()
        if row.startswith("| `")
    }
    assert set(rows) == {
        "`SLACK_TEAM_IDS`, `SLACK_ENTERPRISE_ID`",
        "`WARDKEY_METRICS_TOKEN`",
        INSECURE,
        "`WARDKEY_MAX_BODY_BYTES`",
        "`WARDKEY_CHECKPOINT_KEY`, `WARDKEY_CHECKPOINT_DIR`",
    }
    fields = Settings.model_fields
    # Empty or unset where the README says so, and the stated sizes and intervals are the code's.
    assert fields["slack_team_ids"].default == "" and fields["slack_enterprise_id"].default is None
    assert rows["`SLACK_TEAM_IDS`, `SLACK_ENTERPRISE_ID`"].startswith("empty: only the bot")
    assert fields["wardkey_metrics_token"].default is None
    assert rows["`WARDKEY_METRICS_TOKEN`"].startswith("unset: `/metrics` is off (403)")
    assert fields["wardkey_metrics_public"].default is False
    assert "`WARDKEY_METRICS_PUBLIC=true` (default `false`)" in section
    mib = int(rows["`WARDKEY_MAX_BODY_BYTES`"].split(" MiB", 1)[0])
    assert fields["wardkey_max_body_bytes"].default == mib * 1024 * 1024
    assert fields["wardkey_checkpoint_key"].default is None
    assert f"`WARDKEY_CHECKPOINT_SECONDS` ({fields['wardkey_checkpoint_seconds'].default:g})" in (
        section
    )
    assert rows[INSECURE].startswith("`false`")
    every = (Target, RosterSource, PagerDutySource, OpsgenieSource, LdapGroup, EntraGroup)
    for flagged in (*every, ServiceNowSystem, JiraSystem, IdentityProvider):
        assert flagged.model_fields["insecure"].default is False
