"""The audit log, version 2: every governed action, journaled before it is answered, stored as
the leaves of one Merkle tree, signed and anchored outside the state dir, rotated in segments.

- `journal.py`: producers append records to their own journal file, one ``write`` each;
- `records.py`: the record format (the exact bytes hashed), redaction, classification;
- `store.py`: the segments and the writer's step that fills them from the journal;
- `writer.py`: the writer's loop (consume, checkpoint, anchor, rotate);
- `merkle.py`: the RFC 6962 tree, inclusion and consistency proofs;
- `anchor.py`: the signing key, signed checkpoints and the anchor sink;
- `read.py`: query, verify, prove, export;
- `log.py`: `AuditLog`, a journal and its writer in one process;
- `legacy.py`: the version-1 log, verified and continued.
"""

from runtime.audit.legacy import AUDIT_FILENAME
from runtime.audit.log import AuditClosed, AuditLog, AuditUnavailable
from runtime.audit.read import (
    ProofError,
    VerifyResult,
    export,
    has_log,
    prove,
    query,
    state_dir_of,
    verify,
    verify_export,
    verify_proof,
)
from runtime.audit.records import DEFAULT_CLASSIFICATIONS, AuditEntry, canonical_json, format_ts
from runtime.auditconfig import AuditOptions, Classification

__all__ = [
    "AUDIT_FILENAME",
    "DEFAULT_CLASSIFICATIONS",
    "AuditClosed",
    "AuditEntry",
    "AuditLog",
    "AuditOptions",
    "AuditUnavailable",
    "Classification",
    "ProofError",
    "VerifyResult",
    "canonical_json",
    "export",
    "format_ts",
    "has_log",
    "prove",
    "query",
    "state_dir_of",
    "verify",
    "verify_export",
    "verify_proof",
]
