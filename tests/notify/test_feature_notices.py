"""Every notice a feature's flows say they tell (`NOTICES` in app/<feature>/flows.py) reaches
them: the notifier gathers each declaration (FEATURE_NOTICES), and no action is claimed twice,
by two features or by a feature and the request core, whose notices the notifier tells itself.
A declaration left out would have its notices logged as unknown and nobody told."""

from __future__ import annotations

import importlib

from app.breakglass.service import HELD, STARTED, WAITING
from app.notify.notifier import FEATURE_NOTICES, Notifier
from app.telling import Telling
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

    def test_no_feature_claims_a_notice_of_the_request_core(self) -> None:
        assert sorted(Notifier._TOLD_ANYWAY & set(declared_notices())) == []
