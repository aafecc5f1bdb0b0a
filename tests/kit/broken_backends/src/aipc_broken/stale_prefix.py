"""Claims prefix_cache but trusts a kept state as far as it reaches, without checking that the
new prompt really shares those tokens (an edited conversation then continues stale state)."""

from aipc import hookimpl
from aipc.backends import reference
from aipc.backends.reference import aipc_quantize, aipc_tokenize  # noqa: F401  (hooks reused)
from aipc.prefix import PrefixCache

from . import generate, info


class StalePrefixCache(PrefixCache):
    def take(self, ids):
        slot, _ = super().take(ids)
        return slot, min(len(slot.ids), len(ids) - 1) if slot.state is not None else 0


@hookimpl
def aipc_backend_info():
    return info("broken-prefix", prefix_cache=True)


@hookimpl
def aipc_load(request):
    loaded = reference.aipc_load(request)
    loaded.extra["prefix"] = StalePrefixCache(request.cache_slots)
    return loaded


@hookimpl
def aipc_generate(model, prompt, config):
    return generate(model, prompt, config)
