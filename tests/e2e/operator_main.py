"""The operator as a module for ``kopf run -m`` (the e2e suite's KopfRunner), on kopf's default registry."""

from typing import Any

import kopf
from expbuild_isolation import apiserver
from expbuild_isolation.controller.handlers import make_registry
from expbuild_isolation.controller.state import OperatorState, remember_login
from expbuild_isolation.kube.config import OperatorConfig

CONFIG = OperatorConfig.from_env()
STATE = OperatorState(config=CONFIG)
make_registry(CONFIG, registry=kopf.get_default_registry())


@kopf.on.startup()
async def share_state(memo: kopf.Memo, **_: Any) -> None:
    memo.state = STATE


@kopf.on.login()
async def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    info = apiserver.login(**kwargs)  # the operator's own login, as `expbuild-isolation operator` uses it
    return await remember_login(STATE, info) if info else None
