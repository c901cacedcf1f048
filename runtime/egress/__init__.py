"""One egress point: every outbound call of the runtime (handler `fetch`, AI providers, the
audit anchor webhook, sandbox ``http.fetch``) goes through an `EgressClient`, which checks the
`EgressPolicy` built from the manifest's ``[egress]`` section on the URL and on each address it
connects to, follows redirects hop by hop, honours kill switch kind ``egress`` and audits
every call. See `client` for the order of the checks, `policy` for the rules and defaults,
`hosts` for host patterns and special addresses, `resolver` for name resolution (and the
``EDGEWORKS_EGRESS_HOSTS`` override for tests), `transport` for the pinned connections.
"""

from runtime.egress.client import ASSERTION_HEADER, EgressClient, Identity
from runtime.egress.config import RUNTIME_PRINCIPAL, EgressConfig, EgressRule
from runtime.egress.errors import (
    REASONS,
    EgressDenied,
    EgressError,
    EgressTimeout,
    ResponseTooLarge,
)
from runtime.egress.hosts import address_class, parse_address, parse_host_pattern
from runtime.egress.policy import Decision, EgressPolicy
from runtime.egress.resolver import (
    HOSTS_ENV,
    ResolveError,
    Resolver,
    StaticResolver,
    SystemResolver,
)

__all__ = [
    "ASSERTION_HEADER",
    "HOSTS_ENV",
    "REASONS",
    "RUNTIME_PRINCIPAL",
    "Decision",
    "EgressClient",
    "EgressConfig",
    "EgressDenied",
    "EgressError",
    "EgressPolicy",
    "EgressTimeout",
    "EgressRule",
    "Identity",
    "ResolveError",
    "Resolver",
    "ResponseTooLarge",
    "StaticResolver",
    "SystemResolver",
    "address_class",
    "parse_address",
    "parse_host_pattern",
]
