"""The grammar of names a manifest declares (scripts, env bindings, classification levels), shared
by config, bindings and the audit log."""

BINDING_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
SCRIPT_NAME = r"^[a-z0-9][a-z0-9_-]{0,62}$"
# A data classification level: an audit column and a field of every message, so short and plain.
LEVEL_NAME = r"^[a-z][a-z0-9_-]{0,31}$"
