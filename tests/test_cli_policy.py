"""`wardkey policy schema`: the JSON Schema an editor (VS Code's YAML extension) checks policy.yaml
against as people type. It must accept every manifest WardKey accepts and refuse broken ones."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from app.cli import main
from app.devtools.big_trust import write_big_trust
from app.devtools.demo import demo_policy_text
from app.policy import parse_policy

ROOT = Path(__file__).parent.parent
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
    assert resources.files("app.devtools").joinpath("demo_policy.yaml").is_file()
