"""The grammar of names a manifest declares (scripts, env bindings), shared by config and bindings."""

BINDING_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
SCRIPT_NAME = r"^[a-z0-9][a-z0-9_-]{0,62}$"
