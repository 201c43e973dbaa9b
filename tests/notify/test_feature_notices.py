"""Every notice a feature's flows say they tell (`NOTICES` in app/<feature>/flows.py) reaches
them: the notifier gathers each declaration (FEATURE_NOTICES), no action is claimed twice, and
the request core's notices are told by the requests' and the grants' flows, the requests' also
any other change of a request (ANY_OTHER_CHANGE). A declaration left out would have its notices
logged as unknown and nobody told; so would a message drawn late (DRAWINGS) left out."""

from __future__ import annotations

import importlib

from app.breakglass.service import HELD, STARTED, WAITING
from app.notify.notifier import FEATURE_DRAWINGS, FEATURE_NOTICES
from app.telling import ANY_OTHER_CHANGE, Drawing, Telling
from tests.conftest import HERE

ROOT = HERE.parent


def declared_notices() -> dict[str, list[str]]:
    """Every action a feature's flows declare they tell (`NOTICES` in any app/…/flows.py),
    found by reading app/ and not through the notifier, so one it fails to gather is missed:
    {action: [the module declaring it, once per declaration]}."""
    found: dict[str, list[str]] = {}
    for path in sorted((ROOT / "app").rglob("flows.py")):
        module = importlib.import_module(".".join(path.relative_to(ROOT).with_suffix("").parts))
        for telling in getattr(module, "NOTICES", ()):
            assert isinstance(telling, Telling), f"{module.__name__}.NOTICES holds {telling!r}"
            found.setdefault(telling.action, []).append(module.__name__)
    return found


class TestEveryFeatureNoticeIsTold:
    def test_each_declared_notice_is_gathered_and_declared_once(self) -> None:
        declared = declared_notices()
        # The features whose flows tell of their notices today.
        features = {"digest.sent", "standing.found", "attestation.asked", "orphans.found"}
        features |= {"review.requested", "review.decided", "lockdown.progress", "stepup.refused"}
        features |= {STARTED, HELD, WAITING}
        assert features <= set(declared)
        twice = {action: where for action, where in declared.items() if len(where) > 1}
        assert twice == {}, f"declared more than once: {twice}"
        gathered = [telling.action for telling in FEATURE_NOTICES]
        assert sorted(gathered) == sorted(declared)

    def test_the_request_cores_notices_are_told_by_requests_and_grants(self) -> None:
        declared = declared_notices()
        requests = ["request.created", "extension.requested", "approval.reminded"]
        requests += ["approval.escalated", "approval.unreachable", ANY_OTHER_CHANGE]
        assert {action: declared.get(action) for action in requests} == {
            action: ["app.requests.flows"] for action in requests
        }
        grants = ["expiry.warned", "access.extended"]
        assert {action: declared.get(action) for action in grants} == {
            action: ["app.grants.flows"] for action in grants
        }

    def test_each_message_drawn_late_is_gathered_and_declared_once(self) -> None:
        declared: list[str] = []
        for path in sorted((ROOT / "app").rglob("flows.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            for drawing in getattr(importlib.import_module(name), "DRAWINGS", ()):
                assert isinstance(drawing, Drawing), f"{name}.DRAWINGS holds {drawing!r}"
                declared.append(drawing.draw)
        assert len(declared) == len(set(declared)) >= 4
        assert sorted(drawing.draw for drawing in FEATURE_DRAWINGS) == sorted(declared)
