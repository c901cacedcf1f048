"""Model inference as a governed binding: the ``[ai]`` manifest section (`config.py`), the
front's gateway every call goes through (`gateway.py`), the usage ledger (`ledger.py`) and the
providers (`providers/`). The isolate side is `runtime/bindings/ai.py` (``env.AI``)."""
