"""Each optional extra, when missing, is one UserError line naming it (TRL and Ray have theirs beside their
integrations: test_trainer_integration.py, test_ray_rollouts.py)."""

from __future__ import annotations

import sys

import pytest

from raise_select.errors import UserError
from raise_select.integrations.scripts import check_report_to


def test_report_to_tensorboard_without_an_event_writer_names_the_extra(monkeypatch):
    for module in ("tensorboardX", "tensorboard"):
        monkeypatch.setitem(sys.modules, module, None)  # `import` now fails as if it were not installed
    check_report_to("none")  # nothing to write: no requirement
    with pytest.raises(UserError, match=r"pip install raise-select\[tensorboard\]") as error:
        check_report_to("tensorboard")
    assert "\n" not in str(error.value)
