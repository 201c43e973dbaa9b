"""`wardkey policy schema`: the JSON Schema an editor (VS Code's YAML extension) checks policy.yaml
against as people type. It must accept every manifest WardKey accepts and refuse broken ones."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from app.cli import main
from app.demo.run import demo_policy_text
from app.demo.slack_fake import FakeSlack, SlackUser
from app.policy import parse_policy
from tests.conftest import HERE
from tests.fakes.big_trust import write_big_trust
from tests.slack_harness import WARD_USERS

ROOT = HERE.parent
MANIFESTS = [
    ROOT / "manifests" / "policy.example.yaml",
    ROOT / "tests" / "data" / "ward_policy.yaml",
]


class EditorLoader(yaml.SafeLoader):
    """YAML as an editor's language server reads it: a date or a time stays text."""


EditorLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def as_an_editor_reads(text: str) -> Any:
    return yaml.load(text, Loader=EditorLoader)


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    import io
    from contextlib import redirect_stdout

    printed = io.StringIO()
    with redirect_stdout(printed):
        assert main(["policy", "schema"]) == 0
    schema = json.loads(printed.getvalue())
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    return jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )


def errors(validator: jsonschema.Draft202012Validator, text: str) -> list[str]:
    return [
        f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(as_an_editor_reads(text))
    ]


class TestPolicySchema:
    @pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
    def test_the_manifests_we_ship_and_test_with_pass(
        self, validator: jsonschema.Draft202012Validator, path: Path
    ) -> None:
        text = path.read_text()
        parse_policy(text)  # WardKey accepts it...
        assert errors(validator, text) == []  # ...and so does the editor

    def test_the_demo_and_big_trust_policies_pass(
        self, validator: jsonschema.Draft202012Validator, tmp_path: Path
    ) -> None:
        assert errors(validator, demo_policy_text("http://127.0.0.1:9/wardkey")) == []
        big = tmp_path / "big.yaml"
        write_big_trust(big, "http://127.0.0.1:9/wardkey", people=5)
        assert errors(validator, big.read_text()) == []

    def test_the_editor_sees_what_policy_check_would_refuse(
        self, validator: jsonschema.Draft202012Validator
    ) -> None:
        text = (ROOT / "tests" / "data" / "ward_policy.yaml").read_text()
        broken = (
            text.replace("risk: low", "risk: lowish", 1)
            .replace("    max_duration: 2h\n", "    max_duraton: 2h\n", 1)
            .replace("rotation: daily", "rotation: daily\n    handoff: 9am", 1)
            .replace('    handoff: "08:00"\n', "", 1)
            .replace("review_within: 24h", "review_within: 2 days", 1)
        )
        found = "\n".join(errors(validator, broken))
        assert "paths.clinical.risk: 'lowish' is not one of" in found
        assert "'max_duraton' was unexpected" in found
        assert "paths.clinical: 'max_duration' is a required property" in found
        assert "oncall.clinical-oncall.handoff: '9am' does not match" in found
        assert "paths.breakglass.review_within: '2 days' is not valid" in found

    def test_a_bad_group_name_or_member_is_refused(
        self, validator: jsonschema.Draft202012Validator
    ) -> None:
        text = (ROOT / "tests" / "data" / "ward_policy.yaml").read_text()
        found = "\n".join(errors(validator, text.replace("  managers:", "  Managers Group:", 1)))
        assert "Managers Group" in found
        assert errors(validator, text.replace("gita@ward.nhs.uk", "gita at ward", 1))

    def test_output_to_a_file_for_the_editor(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        out = tmp_path / "wardkey-policy.schema.json"
        assert main(["policy", "schema", "--output", str(out)]) == 0
        assert capsys.readouterr().out == ""
        schema = json.loads(out.read_text())
        assert schema["title"] == "WardKey policy manifest"
        # Each duration says how to write one, where the editor shows it on hover.
        path = schema["$defs"]["AccessPath"]["properties"]["max_duration"]
        assert path["description"] == "A duration: 15m, 2h, 1h30m or 7d."


def test_the_demo_policy_resource_is_packaged() -> None:
    assert resources.files("app.demo").joinpath("demo_policy.yaml").is_file()
    assert resources.files("app.demo").joinpath("clinical_roster.csv").is_file()


WARD = ROOT / "tests" / "data" / "ward_policy.yaml"


def line_of(fragment: str, after: str = "") -> int:
    lines = WARD.read_text().splitlines()
    start = next(n for n, text in enumerate(lines) if after in text) if after else 0
    return next(n for n, text in enumerate(lines[start:], start + 1) if fragment in text)


class TestPeopleInSlack:
    """`policy check --slack`: before the night shift, find the rota nobody can act on."""

    @pytest.fixture
    def slack(self, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeSlack]:
        fake = FakeSlack().start()
        for user in WARD_USERS:
            fake.add_user(replace(user))  # copies: a test changes them
        fake.add_user(SlackUser("U0GITA2ND", None, "Gita Rao (second account)"))
        monkeypatch.setenv("SLACK_BOT_TOKEN", fake.token)
        monkeypatch.setenv("SLACK_API_URL", fake.api_url)
        for name in ("SLACK_TEAM_IDS", "SLACK_ENTERPRISE_ID"):
            monkeypatch.delenv(name, raising=False)
        yield fake
        fake.stop()

    def test_everyone_active_passes(
        self, slack: FakeSlack, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main(["policy", "check", str(WARD), "--slack"]) == 0
        out = capsys.readouterr().out
        assert "Slack: all 10 accounts the policy names are active people of this workspace." in out
        # each person once: an e-mail by users.lookupByEmail, an ID by users.info
        assert len(slack.calls_to("users.lookupByEmail")) == 8
        assert {c.args["user"] for c in slack.calls_to("users.info")} == {"U0AMIRA", "U0GITA2ND"}

    def test_unusable_accounts_are_named_at_each_place_with_the_line(
        self, slack: FakeSlack, capsys: pytest.CaptureFixture[str]
    ) -> None:
        slack.users["U0BEN"].deleted = True  # left the trust
        slack.users["U0CHLOE"].is_ultra_restricted = True  # a single-channel guest now
        slack.users["U0HANA"].is_bot = True  # her address was put on an integration
        del slack.users["U0ERIN"]  # never had Slack
        slack.users["U0VAL"].team_id = "T0OTHER"  # a vendor's own workspace

        assert main(["policy", "check", str(WARD), "--slack"]) == 1

        captured = capsys.readouterr()
        assert "Slack: 10 accounts looked up; 5 cannot use WardKey (below)." in captured.out
        err = captured.err.splitlines()
        assert err[0] == f"{WARD}: 5 accounts WardKey cannot act for"
        rota = line_of("members: [ben@", after="clinical-oncall:")
        assert (
            "  oncall.clinical-oncall.members.0: ben@ward.nhs.uk is deactivated in Slack (Ben "
            f"Hughes) (line {rota})" in err
        )
        assert (
            f"  groups.clinical-systems.1: ben@ward.nhs.uk is deactivated in Slack (Ben Hughes) "
            f"(line {line_of('clinical-systems: [')})" in err
        )
        assert (
            f"  vendors.medisoft.sponsor: ben@ward.nhs.uk is deactivated in Slack (Ben Hughes) "
            f"(line {line_of('sponsor: ben@')})" in err
        )
        assert (
            "  oncall.clinical-oncall.members.1: chloe@ward.nhs.uk is a guest account (Chloe "
            f"Evans): guests cannot use WardKey (line {rota})" in err
        )
        assert (
            "  groups.managers.1: hana@ward.nhs.uk is a bot, not a person (Hana Novak) "
            f"(line {line_of('managers: [')})" in err
        )
        assert (
            "  groups.infra-leads.0: erin@ward.nhs.uk is not in Slack: no account has this "
            f"e-mail address (line {line_of('infra-leads: [')})" in err
        )
        assert any(
            line.startswith(
                "  vendors.medisoft.people.0: val@vendor.example is an account of "
                "another workspace or organisation (Val Stone)"
            )
            for line in err
        )
        # The consequence a night shift would meet: nobody on the clinical rota can approve.
        assert (
            "  oncall.clinical-oncall: nobody in this rota can act in Slack; clinical would find "
            f"no approver from it (line {line_of('clinical-oncall:')})" in err
        )

    def test_an_unknown_slack_id_is_reported(
        self, slack: FakeSlack, capsys: pytest.CaptureFixture[str]
    ) -> None:
        del slack.users["U0AMIRA"]
        assert main(["policy", "check", str(WARD), "--slack"]) == 1
        assert (
            "  groups.clinical-systems.0: U0AMIRA is not in Slack: no account has this ID "
            f"(line {line_of('clinical-systems: [')})" in capsys.readouterr().err.splitlines()
        )

    def test_slack_not_answering_or_refusing_the_token_is_one_line_and_exit_2(
        self,
        slack: FakeSlack,
        capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-wrong")
        assert main(["policy", "check", str(WARD), "--slack"]) == 2
        assert capsys.readouterr().err.strip().splitlines() == [
            "wardkey: SLACK_BOT_TOKEN was refused by Slack (invalid_auth): copy the Bot User "
            "OAuth Token (xoxb-…) again"
        ]
        monkeypatch.setenv("SLACK_BOT_TOKEN", slack.token)
        slack.unreachable = True
        assert main(["policy", "check", str(WARD), "--slack"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1, err
        assert err[0].startswith(f"wardkey: Slack did not answer at {slack.api_url}auth.test")

    def test_without_a_token_says_what_to_set(
        self, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.delenv("SLACK_BOT_TOKEN", raising=False)
        assert main(["policy", "check", str(WARD), "--slack"]) == 2
        assert capsys.readouterr().err.startswith("wardkey: SLACK_BOT_TOKEN is not set")


def test_the_summary_counts_in_words() -> None:
    """One rota is "1 rota", as every count the summary gives (app.wording.plural)."""
    from io import StringIO

    from app.cli.policy import print_summary

    policy = parse_policy((HERE / "data" / "ward_policy.yaml").read_text(), "t")
    out = StringIO()
    print_summary(policy, out)
    counts = out.getvalue().splitlines()[1]
    assert ", 1 rota, " in counts, counts
    assert "1 rotas" not in counts and "1 targets" not in counts
