from aipc.chat import PHI3_TEMPLATE, ChatTemplate, messages_for


def test_phi3_template_renders_the_walkthrough_prompt():
    text = ChatTemplate(PHI3_TEMPLATE).render(
        messages_for("Can you introduce yourself?", "You are a helpful AI assistant.")
    )
    assert text == ("<|system|>\nYou are a helpful AI assistant.<|end|>\n"
                    "<|user|>\nCan you introduce yourself?<|end|>\n<|assistant|>\n")


def test_core_rendering_equals_transformers_rendering(smollm2, tiny_phi3):
    """The core renders templates without transformers; it must agree with transformers."""
    from transformers import AutoTokenizer

    conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Capital of France?"}]
    for folder in (smollm2, tiny_phi3):
        tokenizer = AutoTokenizer.from_pretrained(folder)
        want = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        assert ChatTemplate.from_folder(folder).render(conversation) == want


def test_phi3_folder_without_template_gets_phi3s(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "phi3"}')
    assert ChatTemplate.from_folder(tmp_path).source == PHI3_TEMPLATE
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    assert ChatTemplate.from_folder(tmp_path) is None
