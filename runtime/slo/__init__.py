"""Service-level objectives computed from recorded events: the `[[slo]]` model, the event
store with its minute and hour roll-ups, the recorder that fills it, and the five families."""
