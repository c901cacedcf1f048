"""Service-level objectives computed from recorded events: the `[[slo]]` model, the event
store with its minute and hour roll-ups, the recorder that fills it, and the five families.

Nothing is re-exported here: the manifest and the binding kinds (isolate code) import
`runtime.slo.config`, and must not load the store, the recorder or the audit reader with it."""
