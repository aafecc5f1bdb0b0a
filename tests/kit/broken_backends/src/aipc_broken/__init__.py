"""Each module is the reference backend with one defect."""

from dataclasses import replace

from aipc.backends import reference
from aipc.errors import PromptTooLongError


def info(name: str, **capabilities):
    base = reference.aipc_backend_info()
    return replace(base, name=name, priority=-100, description="deliberately broken (aipc's own tests)",
                   capabilities=replace(base.capabilities, **capabilities))


def generate(model, prompt, config):
    """The reference's generate, refusing a prompt over the model's context itself as the contract
    asks (so that only each module's own defect fails the suite, whatever the reference does)."""
    check_prompt(model, prompt)
    return reference.aipc_generate(model, prompt, config)


def check_prompt(model, prompt) -> None:
    tokens = len(reference.aipc_tokenize(model, prompt))
    if model.context_length and tokens >= model.context_length:
        raise PromptTooLongError(f"the prompt has {tokens} tokens; the model's context is {model.context_length}")
