"""The AI gateway's providers: one module per kind (openai, workers_ai, scripted, replay) behind
the `Provider` protocol, built from the manifest by `build_provider`."""

from runtime.ai.providers.base import Answer, Provider, ProviderError, Usage, build_provider

__all__ = ["Answer", "Provider", "ProviderError", "Usage", "build_provider"]
