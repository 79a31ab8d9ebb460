"""The operator registers event handlers only, which is what lets it give kopf empty storages.

``controller/storage.py`` makes kopf keep and build no diff base and no progress records (they cost a
quarter of the operator's CPU in a burst). A change-detecting handler (``on.create``, ``on.update``,
``on.delete``, ``on.field``, a daemon or a timer) would read that diff and silently see nothing: adding
one must fail here first.
"""

from __future__ import annotations

import kopf

from expbuild_isolation.controller.handlers import configure, make_registry
from expbuild_isolation.controller.lifecycle import FINALIZER
from expbuild_isolation.controller.storage import NoDiffBase, NoProgress
from expbuild_isolation.kube.config import OperatorConfig


def test_no_handler_of_the_operator_reads_kopfs_diff_or_progress():
    registry = make_registry(OperatorConfig())
    assert registry._watching.get_all_handlers(), "the event handlers are registered"
    assert registry._changing.get_all_handlers() == []
    assert registry._spawning.get_all_handlers() == []  # daemons and timers keep per-object state too


def test_a_change_handler_would_be_caught():
    """Positive control: the check above sees a deletion handler when there is one."""
    registry = make_registry(OperatorConfig())
    kopf.on.delete("expbuild.io", "v1alpha1", "executiontasks", registry=registry)(lambda **_: None)
    assert registry._changing.get_all_handlers()


async def test_kopf_is_configured_with_empty_storages_and_a_finalizer_that_is_not_ours():
    settings = kopf.OperatorSettings()
    await configure(settings)
    assert isinstance(settings.persistence.diffbase_storage, NoDiffBase)
    assert isinstance(settings.persistence.progress_storage, NoProgress)
    # kopf strips its own finalizer from objects no kopf handler needs it for: it must not be the tasks' one
    assert settings.persistence.finalizer != FINALIZER
