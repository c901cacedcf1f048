"""Service principals: who the runtime acts as when a script or a workflow class calls out.

Each script runs as ``script:<script>``; each workflow class as ``workflow:<script>/<class>``
(its steps, and what they call: capability tokens they mint, outbound fetches, AI calls). The
principal names the caller in audit entries, is the issuer of the capability tokens it mints, and
selects its capability ceiling and egress rules in the manifest.
"""

from __future__ import annotations

import re

from objects.workflows.step import CURRENT_STEP
from runtime.names import BINDING_NAME, SCRIPT_NAME

__all__ = ["PRINCIPAL", "current_principal", "script_principal", "workflow_principal"]

_SCRIPT, _CLASS = SCRIPT_NAME.strip("^$"), BINDING_NAME.strip("^$")
PRINCIPAL = re.compile(rf"^(?:script:{_SCRIPT}|workflow:{_SCRIPT}/{_CLASS})$")


def script_principal(script: str) -> str:
    return f"script:{script}"


def workflow_principal(script: str, workflow_class: str) -> str:
    return f"workflow:{script}/{workflow_class}"


def current_principal(script: str) -> str:
    """The principal of the code running in this context of a `script`'s isolate: the workflow
    class whose step is running, else the script."""
    step = CURRENT_STEP.get()
    return workflow_principal(script, step.workflow_class) if step is not None else script_principal(script)
