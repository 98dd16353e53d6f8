"""Model profiles: what a model family needs around its weights to complete and chat correctly.

One profile per family holds the facts that clients otherwise get wrong one by one: the FIM
sentinel strings and their ids, the ids that end generation, the chat template, whether a BOS is
prepended, and the recommended sampling. A profile is *resolved from the model's own tokenizer*:
ids are looked up by name, never assumed, so a checkpoint whose vocabulary lacks a sentinel can
never be prompted with one (the commonest CodeGemma serving bug: sentinel text leaking out
because the stop ids were guessed).

Families (spec codegemma.md §1.3, §6.3):
    codegemma     FIM-capable vocabulary (<|fim_prefix|> present); stop on the 4 sentinels and <eos>
    codegemma-it  the same vocabulary, instruction-tuned: chat only, stop on <end_of_turn> and <eos>
    gemma/gemma2/gemma3 (+ "-it")  no FIM; PT stops on <eos>, IT on <end_of_turn> and <eos>
    generic       any other vocabulary: prefix-only completion, stop on <eos>
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Mapping, Protocol, Sequence

from codegemma.errors import CodegemmaError
from codegemma.fim import CODEGEMMA_SENTINELS, ORDERS, SPM, FimSentinels

TURN_START = "<start_of_turn>"
TURN_END = "<end_of_turn>"
# Only the Gemma 3 vocabulary has image tokens; it tells Gemma 3 apart from Gemma 1/2 (same turn tokens).
GEMMA3_MARKER = "<start_of_image>"

PROFILE_NAMES = ("codegemma", "codegemma-it", "gemma", "gemma-it", "gemma2", "gemma2-it", "gemma3", "gemma3-it",
                 "generic")


class _Vocabulary(Protocol):
    def token_to_id(self, token: str) -> int | None: ...


@dataclass(frozen=True)
class Sampling:
    """Recommended decoding settings for one task. repetition_penalty stays 1.0: users of CodeGemma
    found the common 1.1 default damages code (repeated identifiers are normal in code)."""

    temperature: float
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    max_new_tokens: int = 128


@dataclass(frozen=True)
class ChatTemplate:
    """Gemma's turn format: `<start_of_turn>{role}\\n{text}<end_of_turn>\\n`, roles `user` and `model`.

    Gemma was not trained with a system role, so system text is prepended to the first user turn
    (what Google's own templates do). Turn text is stripped of surrounding whitespace, as Google's
    templates do (`| trim`), so a conversation tokenizes here as through transformers'
    `apply_chat_template`; the system text is prepended as given.
    """

    turn_start: str = TURN_START
    turn_end: str = TURN_END
    user_role: str = "user"
    model_role: str = "model"

    @staticmethod
    def turn_text(content: str) -> str:
        """The text of a user or model turn as the template writes it."""
        return content.strip()

    def pieces(self, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = True) -> list[str]:
        """The conversation as pieces (turn markers are separate pieces, encoded by id)."""
        system: list[str] = []
        turns: list[tuple[str, str]] = []
        for i, message in enumerate(messages):
            role, content = message.get("role"), message.get("content")
            if not isinstance(content, str):
                raise CodegemmaError(f"messages[{i}].content must be a string")
            if role == "system":
                system.append(content)
            elif role == "user":
                turns.append((self.user_role, self.turn_text(content)))
            elif role in ("assistant", "model"):
                turns.append((self.model_role, self.turn_text(content)))
            else:
                raise CodegemmaError(f"messages[{i}].role {role!r} is not one of system, user, assistant")
        if system:
            if not turns or turns[0][0] != self.user_role:
                turns.insert(0, (self.user_role, ""))
            turns[0] = (self.user_role, "\n\n".join(system + ([turns[0][1]] if turns[0][1] else [])))
        out: list[str] = []
        for role, content in turns:
            out += [self.turn_start, f"{role}\n{content}", self.turn_end, "\n"]
        if add_generation_prompt:
            out += [self.turn_start, f"{self.model_role}\n"]
        return out


@dataclass(frozen=True)
class ModelProfile:
    name: str
    family: str | None
    instruction_tuned: bool
    fim_supported: bool
    sentinels: FimSentinels | None
    sentinel_ids: Mapping[str, int]
    stop_ids: frozenset[int]
    # Text that must never reach a user even if it slips past the id-level stop (e.g. a tokenizer
    # that spells a sentinel as ordinary tokens): the completion is cut at the first occurrence.
    stop_texts: tuple[str, ...]
    add_bos: bool
    bos_id: int | None
    eos_id: int | None
    chat_template: ChatTemplate | None
    chat_ids: Mapping[str, int]
    # SPM puts the suffix first, so an editor's growing prefix extends the cached prompt; PSM puts
    # the suffix after the prefix and every keystroke invalidates everything after the cursor.
    fim_order: str = SPM
    fim_sampling: Sampling = Sampling(temperature=0.0, max_new_tokens=128)
    chat_sampling: Sampling = Sampling(temperature=0.7, top_k=64, top_p=0.95, max_new_tokens=512)
    notes: tuple[str, ...] = field(default=())

    def with_fim_order(self, order: str) -> "ModelProfile":
        if order not in ORDERS:
            raise CodegemmaError(f"unknown FIM order {order!r}; expected one of {', '.join(ORDERS)}")
        return replace(self, fim_order=order)

    def describe(self) -> dict:
        """A JSON-ready summary (served by the HTTP API so clients need not guess)."""
        return {
            "name": self.name,
            "family": self.family,
            "instruction_tuned": self.instruction_tuned,
            "fim_supported": self.fim_supported,
            "fim_order": self.fim_order if self.fim_supported else None,
            "sentinels": dict(self.sentinel_ids),
            "stop_ids": sorted(self.stop_ids),
            "add_bos": self.add_bos,
            "chat_template": self.chat_template is not None,
            "fim_sampling": self.fim_sampling.__dict__,
            "chat_sampling": self.chat_sampling.__dict__,
        }


def _lookup(vocab: _Vocabulary, token: str) -> int | None:
    try:
        return vocab.token_to_id(token)
    except (KeyError, ValueError):
        return None


def _special_id(vocab: _Vocabulary, attr: str, token: str) -> int | None:
    value = getattr(vocab, attr, None)
    return value if isinstance(value, int) else _lookup(vocab, token)


def detect_family(vocab: _Vocabulary) -> str | None:
    """gemma3 / gemma (Gemma 1 or 2, which share a vocabulary) / None for a non-Gemma vocabulary."""
    if _lookup(vocab, TURN_START) is None:
        return None
    return "gemma3" if _lookup(vocab, GEMMA3_MARKER) is not None else "gemma"


def resolve_profile(tokenizer: _Vocabulary, override: str | None = None, *, family: str | None = None,
                    instruction_tuned: bool | None = None, fim_order: str | None = None) -> ModelProfile:
    """The profile of the model that owns `tokenizer`.

    `override` names a profile from PROFILE_NAMES (or "auto"). `family` (from the model config:
    gemma, gemma2, gemma3) refines what the vocabulary cannot tell (Gemma 1 and 2 share one).
    `instruction_tuned` picks the IT variant; weights do not say whether they were tuned.
    """
    if override not in (None, "", "auto"):
        if override not in PROFILE_NAMES:
            raise CodegemmaError(f"unknown profile {override!r}; expected one of {', '.join(PROFILE_NAMES)}")
        name = override
    else:
        name = _auto_name(tokenizer, family, bool(instruction_tuned))
    profile = _build(tokenizer, name)
    return profile.with_fim_order(fim_order) if fim_order else profile


def _auto_name(vocab: _Vocabulary, family: str | None, instruction_tuned: bool) -> str:
    suffix = "-it" if instruction_tuned else ""
    if _lookup(vocab, CODEGEMMA_SENTINELS.prefix) is not None:
        return "codegemma" + suffix
    detected = detect_family(vocab)
    if detected is None:
        return "generic"
    # The config can tell Gemma 1 from Gemma 2 (one vocabulary); the vocabulary wins on Gemma 3.
    if family in ("gemma", "gemma2") and detected == "gemma":
        detected = family
    return detected + suffix


def _build(vocab: _Vocabulary, name: str) -> ModelProfile:
    instruction_tuned = name.endswith("-it")
    base = name.removesuffix("-it")
    bos_id = _special_id(vocab, "bos_id", "<bos>")
    eos_id = _special_id(vocab, "eos_id", "<eos>")
    turn_ids = {t: i for t in (TURN_START, TURN_END) if (i := _lookup(vocab, t)) is not None}

    sentinel_ids: dict[str, int] = {}
    if base == "codegemma":
        missing = [s for s in CODEGEMMA_SENTINELS.all() if _lookup(vocab, s) is None]
        if missing:
            raise CodegemmaError(f"profile {name!r} needs FIM sentinels the tokenizer lacks: {', '.join(missing)}")
        sentinel_ids = {s: _lookup(vocab, s) for s in CODEGEMMA_SENTINELS.all()}
    fim_supported = bool(sentinel_ids) and not instruction_tuned  # the IT model is not meant for FIM [MC]

    chat_template = None
    if base != "generic":
        if len(turn_ids) < 2:
            if instruction_tuned:
                raise CodegemmaError(f"profile {name!r} needs {TURN_START} and {TURN_END}; the tokenizer lacks them")
        else:
            chat_template = ChatTemplate()

    stops: set[int] = {eos_id} if eos_id is not None else set()
    stop_texts: list[str] = ["<eos>"]
    if fim_supported:
        stops |= set(sentinel_ids.values())
        stop_texts += list(CODEGEMMA_SENTINELS.all())
    if instruction_tuned and TURN_END in turn_ids:
        stops.add(turn_ids[TURN_END])
    if turn_ids:
        stop_texts += [TURN_END, TURN_START]  # a PT model does not stop on them, but they are never code
    if sentinel_ids and not fim_supported:
        stop_texts += list(CODEGEMMA_SENTINELS.all())

    chat_sampling = Sampling(temperature=0.7, top_k=64, top_p=0.95, max_new_tokens=512)
    if base == "gemma3":  # Google's generation_config.json for Gemma 3
        chat_sampling = Sampling(temperature=1.0, top_k=64, top_p=0.95, max_new_tokens=512)
    family = {"codegemma": "gemma", "generic": None}.get(base, base)
    return ModelProfile(
        name=name, family=family, instruction_tuned=instruction_tuned, fim_supported=fim_supported,
        sentinels=CODEGEMMA_SENTINELS if sentinel_ids else None,
        sentinel_ids=MappingProxyType(sentinel_ids), stop_ids=frozenset(stops), stop_texts=tuple(stop_texts),
        add_bos=bos_id is not None,
        bos_id=bos_id, eos_id=eos_id, chat_template=chat_template, chat_ids=MappingProxyType(turn_ids),
        chat_sampling=chat_sampling,
    )
