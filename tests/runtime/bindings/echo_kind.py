"""A binding kind that exists only in the tests: `[[scripts.echoes]]` gives `env.<binding>`, whose
`say(text)` travels to the front (relay `test_echo_call`), which forwards it to an isolate of the
named script (op `test_echo`), which answers with the kind's prefix, the text and its pid.

It is wired in by `EDGEWORKS_BINDINGS=tests.runtime.bindings.echo_kind`, without touching any
other file: the proof that a binding kind is one module."""

from __future__ import annotations

import dataclasses
import os
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from runtime.bindings import BindingHost, BindingKind, IsolateAPI, RelayPort
from runtime.bindings.services import call_deadline, raise_remote, relay
from runtime.ipc import Channel
from runtime.protocol import Message, Result, message


class EchoBinding(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    binding: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
    script: str
    prefix: str = ""


@message("test_echo_call")
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class EchoCall(Message):
    script: str
    binding: str
    text: str


@message("test_echo")
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class EchoServe(Message):
    binding: str
    text: str


class Echo:
    def __init__(self, channel: Channel, script: str, binding: str, deadline_s: float):
        self._channel, self._script, self._binding, self._deadline_s = channel, script, binding, deadline_s

    async def say(self, text: str) -> str:
        reply = await relay(self._channel, EchoCall(script=self._script, binding=self._binding, text=text),
                            self._deadline_s)
        raise_remote(reply)
        return reply["result"]


def _build(host: BindingHost) -> dict[str, Any]:
    host.hosts["echo_prefixes"] = {b.binding: b.prefix for b in host.script.echoes}
    return {b.binding: Echo(host.channel, b.script, b.binding, call_deadline(host)) for b in host.script.echoes}


async def _serve(isolate: IsolateAPI, msg: EchoServe) -> Result:
    prefix = isolate.hosts.get("echo_prefixes", {}).get(msg.binding, "?")
    return Result(result=f"{prefix}{msg.text} from {os.getpid()}")


async def _relay(port: RelayPort, msg: EchoCall) -> dict[str, Any]:
    return await port.forward(msg.script, EchoServe(binding=msg.binding, text=msg.text))


KIND = BindingKind(
    name="echo",
    fields={"echoes": (list[EchoBinding], [])},
    env_names=lambda script: [(f"echoes[{j}]", b.binding) for j, b in enumerate(script.echoes)],
    check=lambda script, app: [(f"echoes[{j}].script", f"no script named {b.script!r}")
                               for j, b in enumerate(script.echoes) if b.script not in [s.name for s in app.scripts]],
    build=_build,
    ops={EchoServe: _serve},
    relays={EchoCall: _relay},
)
