"""Model profiles resolved from vocabularies: ids looked up by name, the right stops, FIM or not."""

from __future__ import annotations

import pytest

from codegemma.errors import CodegemmaError
from codegemma.fim import PSM, SPM, encode_pieces
from codegemma.profiles import PROFILE_NAMES, ChatTemplate, detect_family, resolve_profile

CODEGEMMA_VOCAB = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<mask>": 4, "<|fim_prefix|>": 67,
                   "<|fim_middle|>": 68, "<|fim_suffix|>": 69, "<|file_separator|>": 70, "<start_of_turn>": 106,
                   "<end_of_turn>": 107}
GEMMA3_VOCAB = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<start_of_turn>": 105, "<end_of_turn>": 106,
                "<start_of_image>": 255999}
PLAIN_VOCAB = {"<s>": 1, "</s>": 2}


class Vocab:
    """Only what profile resolution may use: lookup by name."""

    def __init__(self, table: dict[str, int]):
        self.table = table

    def token_to_id(self, token: str) -> int | None:
        return self.table.get(token)

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        return [1000 + ord(c) for c in text]


def test_codegemma_pt_stops_on_the_four_sentinels_and_eos():
    profile = resolve_profile(Vocab(CODEGEMMA_VOCAB))
    assert profile.name == "codegemma"
    assert profile.fim_supported
    assert profile.stop_ids == {67, 68, 69, 70, 1}
    assert dict(profile.sentinel_ids) == {"<|fim_prefix|>": 67, "<|fim_middle|>": 68, "<|fim_suffix|>": 69,
                                          "<|file_separator|>": 70}
    assert profile.fim_sampling.repetition_penalty == 1.0
    assert profile.fim_sampling.temperature <= 0.2
    assert profile.add_bos and profile.bos_id == 2


def test_codegemma_it_chats_and_stops_on_end_of_turn():
    profile = resolve_profile(Vocab(CODEGEMMA_VOCAB), instruction_tuned=True)
    assert profile.name == "codegemma-it"
    assert not profile.fim_supported  # the IT model is not meant for FIM
    assert 107 in profile.stop_ids and 67 not in profile.stop_ids
    assert profile.chat_template is not None
    assert "<|file_separator|>" in profile.stop_texts  # still scrubbed if it appears as text


def test_gemma3_has_no_fim_and_its_own_turn_ids():
    pt = resolve_profile(Vocab(GEMMA3_VOCAB))
    it = resolve_profile(Vocab(GEMMA3_VOCAB), instruction_tuned=True)
    assert pt.name == "gemma3" and not pt.fim_supported and pt.sentinels is None
    assert 1 in pt.stop_ids
    assert it.name == "gemma3-it" and it.stop_ids == {106, 1}
    assert dict(it.chat_ids) == {"<start_of_turn>": 105, "<end_of_turn>": 106}


def test_gemma1_and_2_share_a_vocabulary_and_the_config_tells_them_apart():
    vocab = {k: v for k, v in CODEGEMMA_VOCAB.items() if "fim" not in k and "file" not in k}
    assert resolve_profile(Vocab(vocab)).name == "gemma"
    assert resolve_profile(Vocab(vocab), family="gemma2", instruction_tuned=True).name == "gemma2-it"
    # a Gemma 3 vocabulary wins over a config that claims otherwise
    assert resolve_profile(Vocab(GEMMA3_VOCAB), family="gemma2").name == "gemma3"


def test_generic_fallback():
    profile = resolve_profile(Vocab(PLAIN_VOCAB))
    assert profile.name == "generic" and not profile.fim_supported and profile.chat_template is None
    assert detect_family(Vocab(PLAIN_VOCAB)) is None


def test_override_and_its_errors():
    assert resolve_profile(Vocab(CODEGEMMA_VOCAB), "gemma-it").name == "gemma-it"
    with pytest.raises(CodegemmaError, match="FIM sentinels the tokenizer lacks"):
        resolve_profile(Vocab(GEMMA3_VOCAB), "codegemma")
    with pytest.raises(CodegemmaError, match="unknown profile"):
        resolve_profile(Vocab(GEMMA3_VOCAB), "starcoder")
    with pytest.raises(CodegemmaError, match="needs <start_of_turn>"):
        resolve_profile(Vocab(PLAIN_VOCAB), "gemma-it")
    assert set(PROFILE_NAMES) >= {"codegemma", "codegemma-it", "gemma3", "gemma3-it", "generic"}


def test_fim_order_default_and_override():
    profile = resolve_profile(Vocab(CODEGEMMA_VOCAB))
    assert profile.fim_order == SPM
    assert resolve_profile(Vocab(CODEGEMMA_VOCAB), fim_order=PSM).fim_order == PSM
    with pytest.raises(CodegemmaError):
        profile.with_fim_order("msp")


def test_chat_template_layout():
    template = ChatTemplate()
    pieces = template.pieces([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                              {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Sort a list"}])
    assert "".join(pieces) == ("<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello"
                               "<end_of_turn>\n<start_of_turn>user\nSort a list<end_of_turn>\n<start_of_turn>model\n")
    profile = resolve_profile(Vocab(GEMMA3_VOCAB), instruction_tuned=True)
    ids = encode_pieces(Vocab(GEMMA3_VOCAB), pieces[:3], dict(profile.chat_ids))
    assert ids[0] == 105 and ids[-1] == 106  # turn markers by id, never spelled out
    with pytest.raises(CodegemmaError, match=r"messages\[0\].role"):
        template.pieces([{"role": "tool", "content": "x"}])


def test_chat_template_trims_turn_text_as_gemmas_templates_do():
    pieces = ChatTemplate().pieces([{"role": "system", "content": "Be brief.\n"},
                                    {"role": "user", "content": "\n  Sort a list\n\n"},
                                    {"role": "assistant", "content": "```python\nsorted(x)\n```\n"}],
                                   add_generation_prompt=False)
    assert "".join(pieces) == ("<start_of_turn>user\nBe brief.\n\n\nSort a list<end_of_turn>\n"
                               "<start_of_turn>model\n```python\nsorted(x)\n```<end_of_turn>\n")


@pytest.mark.slow
@pytest.mark.real_weights
def test_default_model_vocabulary_resolves_to_gemma3(default_gguf_path):
    from codegemma.checkpoints import load

    tok = load(default_gguf_path, progress=False).tokenizer  # the GGUF's vocabulary, converted once per cache
    profile = resolve_profile(tok)
    assert profile.name == "gemma3" and not profile.fim_supported
    assert tok.token_to_id("<end_of_turn>") == 106 and tok.token_to_id("<start_of_turn>") == 105
    assert resolve_profile(tok, instruction_tuned=True).stop_ids == {tok.eos_id, 106}
