"""Hybrid prompts: a template with named slots; each item is rendered as ``<title> <|item|>``; the optional
``{user}`` slot is the one ``<|user|>`` placeholder of the collaborative user token.

Layout of one example (left-padded, so every prompt ends at the last column; convenient for the shared-cache
scoring and for generation, which both continue from the last prompt token)::

    [pad ... pad] prompt tokens ... "Answer:" [answer tokens + eos]

The answer (target title + end-of-sequence) is tokenised separately from the prompt and appended, so that
training (:meth:`PromptBuilder.build` with answers) and candidate scoring
(:meth:`PromptBuilder.encode_answers`) tokenise a title identically. Placeholders appear in order: history
items (oldest first) then candidates, each item as ``tokens_per_item`` consecutive ``<|item|>`` tokens.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field

import torch
from torch.nn.utils.rnn import pad_sequence

from amfrec.config.options import DEFAULT_TEMPLATE as DEFAULT_TEMPLATE_TEXT
from amfrec.llm.backbone import ITEM_TOKEN, USER_TOKEN

IGNORE_INDEX = -100
SLOTS = frozenset({"history", "candidates", "n_candidates", "noun", "noun_plural", "user"})
REQUIRED_SLOTS = frozenset({"history"})


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids for left-padded rows: 0 at the first real token. (B, T) -> (B, T) long."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


@dataclass
class PromptTemplate:
    """A prompt as data. ``text`` uses the named slots ``{history}`` (required), ``{candidates}``,
    ``{user}``, ``{n_candidates}``, ``{noun}``, ``{noun_plural}`` (optional); ``answer_prefix`` goes before
    the answer."""

    text: str = DEFAULT_TEMPLATE_TEXT
    noun: str = "item"
    noun_plural: str = ""  # empty = noun + "s"
    item_separator: str = ", "
    answer_prefix: str = " "

    def __post_init__(self) -> None:
        if not self.noun_plural:
            self.noun_plural = self.noun + "s"
        found = set()
        try:
            parsed = list(string.Formatter().parse(self.text))
        except ValueError as e:
            raise ValueError(f"prompt template: malformed braces ({e})") from None
        for _, name, spec, conv in parsed:
            if name is None:
                continue
            if name == "" or name.isdigit():
                raise ValueError("prompt template: positional slot '{}' not allowed; use named slots")
            if name not in SLOTS:
                raise ValueError(f"prompt template: unknown slot {{{name}}}; allowed: {sorted(SLOTS)}")
            if spec or conv:
                raise ValueError(
                    f"prompt template: slot {{{name}}} must not have a format spec or conversion"
                )
            found.add(name)
        self.slots = frozenset(found)
        missing = REQUIRED_SLOTS - found
        if missing:
            raise ValueError(f"prompt template: missing required slot(s) {sorted(missing)}")
        for token in (ITEM_TOKEN, USER_TOKEN):
            if token in self.text:
                raise ValueError(f"prompt template: must not contain the placeholder {token} itself")

    @property
    def has_candidates(self) -> bool:
        return "candidates" in self.slots

    @property
    def reads_candidates(self) -> bool:
        """Whether the text depends on the candidates at all (their titles or their count): if not, a
        catalogue ranking (every item a candidate) need not look up or render their titles."""
        return bool(self.slots & {"candidates", "n_candidates"})

    @property
    def has_user(self) -> bool:
        return "user" in self.slots

    def render(self, history: list[str], candidates: list[str]) -> str:
        """Fill the slots with already-rendered item strings."""
        return self.text.format(
            history=self.item_separator.join(history),
            candidates=self.item_separator.join(candidates),
            user=USER_TOKEN,
            n_candidates=len(candidates),
            noun=self.noun,
            noun_plural=self.noun_plural,
        )


@dataclass
class PromptBatch:
    """Token tensors of one batch, left-padded.

    input_ids (B, T) long; attention_mask (B, T) long (0 = padding); labels (B, T) long, -100 except the
    answer tokens (title + eos); n_slots (B,) long, placeholders per example (= items * tokens_per_item);
    prompt_lengths (B,) long, real (non-pad) prompt tokens without the answer.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    n_slots: torch.Tensor
    prompt_lengths: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))

    def to(self, device: torch.device | str) -> PromptBatch:
        return PromptBatch(
            input_ids=self.input_ids.to(device),
            attention_mask=self.attention_mask.to(device),
            labels=self.labels.to(device),
            n_slots=self.n_slots.to(device),
            prompt_lengths=self.prompt_lengths.to(device),
        )


class PromptBuilder:
    """Turns item titles into token ids with ``<|item|>`` placeholders (see the module docstring)."""

    def __init__(
        self,
        tokenizer,
        template: PromptTemplate | None = None,
        item_token: str = ITEM_TOKEN,
        tokens_per_item: int = 1,
        user_per_item: bool = False,
    ) -> None:
        """user_per_item: each item is followed by a ``<|user|>`` placeholder (model.positions 'all': the
        collaborative state after that item), instead of the template's one ``{user}`` slot."""
        if tokens_per_item < 0:
            raise ValueError(f"tokens_per_item must be >= 0 (0 = titles only), got {tokens_per_item}")
        if user_per_item and (template or PromptTemplate()).has_user:
            raise ValueError("user tokens after each item exclude the template's {user} slot")
        self.tokenizer = tokenizer
        self.template = template or PromptTemplate()
        self.item_token = item_token
        self.tokens_per_item = tokens_per_item
        self.user_per_item = user_per_item
        self.has_user = self.template.has_user or user_per_item  # any <|user|> placeholder at all
        self.item_token_id = tokenizer.convert_tokens_to_ids(item_token)
        self.user_token_id = tokenizer.convert_tokens_to_ids(USER_TOKEN) if self.has_user else -1
        for token in (item_token, USER_TOKEN) if self.has_user else (item_token,):
            ids = tokenizer(token, add_special_tokens=False)["input_ids"]
            if ids != [tokenizer.convert_tokens_to_ids(token)] or ids[0] == tokenizer.unk_token_id:
                raise ValueError(
                    f"tokenizer does not encode {token!r} as one token (add it as a special token)"
                )
        if tokenizer.eos_token_id is None or tokenizer.pad_token_id is None:
            raise ValueError("tokenizer needs eos and pad tokens (load it through amfrec.llm.backbone)")
        self.eos_id = int(tokenizer.eos_token_id)
        self.pad_id = int(tokenizer.pad_token_id)

    def clean_title(self, title: str) -> str:
        """A title as shown in the prompt: no placeholder text inside, whitespace normalised."""
        return " ".join(title.replace(self.item_token, " ").replace(USER_TOKEN, " ").split())

    def render_item(self, title: str) -> str:
        if self.tokens_per_item == 0:  # titles only (the zero-shot LM)
            return self.clean_title(title)
        user = USER_TOKEN if self.user_per_item else ""
        return f"{self.clean_title(title)} {self.item_token * self.tokens_per_item}{user}"

    def query_ends(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, T) -> (B, T) bool: each item's last token (its ``<|user|>``, else its last ``<|item|>``), the
        positions whose hidden states score the next item (model.positions 'all'); one per history item."""
        if self.user_per_item:
            return input_ids == self.user_token_id
        is_item = input_ids == self.item_token_id
        nxt = torch.cat([is_item[:, 1:], torch.zeros_like(is_item[:, :1])], 1)
        return is_item & ~nxt

    def render(self, history_titles: list[str], candidate_titles: list[str]) -> str:
        """The prompt text of one example (candidates rendered only when the template lists them: a
        catalogue ranking passes every item)."""
        listed = (
            [self.render_item(t) for t in candidate_titles]
            if self.template.has_candidates
            else candidate_titles
        )
        return self.template.render([self.render_item(t) for t in history_titles], listed)

    def encode_answers(self, titles: list[str]) -> list[list[int]]:
        """Token ids of ``answer_prefix + title`` followed by eos, one list per title (one tokenizer call)."""
        texts = [self.template.answer_prefix + self.clean_title(t) for t in titles]
        encoded = self.tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
        return [ids + [self.eos_id] for ids in encoded]

    def build(
        self,
        history_titles: list[list[str]],
        candidate_titles: list[list[str]],
        answers: list[str] | None = None,
    ) -> PromptBatch:
        """Tokenise a batch of prompts (and answers when given) into a left-padded :class:`PromptBatch`.

        A template without ``{candidates}`` ignores ``candidate_titles`` (their placeholders are not counted).
        """
        if len(history_titles) != len(candidate_titles):
            raise ValueError(f"{len(history_titles)} histories but {len(candidate_titles)} candidate lists")
        if answers is not None and len(answers) != len(history_titles):
            raise ValueError(f"{len(answers)} answers for {len(history_titles)} prompts")
        texts = [self.render(h, c) for h, c in zip(history_titles, candidate_titles, strict=True)]
        prompts = self.tokenizer(texts, add_special_tokens=True)["input_ids"]
        answer_ids = self.encode_answers(answers) if answers is not None else [[] for _ in prompts]
        seqs = [torch.tensor(p + a, dtype=torch.long) for p, a in zip(prompts, answer_ids, strict=True)]
        labels = [
            torch.tensor([IGNORE_INDEX] * len(p) + a, dtype=torch.long)
            for p, a in zip(prompts, answer_ids, strict=True)
        ]
        input_ids = pad_sequence(seqs, batch_first=True, padding_value=self.pad_id, padding_side="left")
        attention_mask = pad_sequence(
            [torch.ones_like(s) for s in seqs], batch_first=True, padding_value=0, padding_side="left"
        )
        labels_t = pad_sequence(labels, batch_first=True, padding_value=IGNORE_INDEX, padding_side="left")
        listed = self.template.has_candidates
        n_items = torch.tensor(
            [len(h) + len(c) * listed for h, c in zip(history_titles, candidate_titles, strict=True)]
        )
        n_slots = n_items * self.tokens_per_item
        found = ((input_ids == self.item_token_id) & (attention_mask == 1)).sum(dim=1)  # (B,)
        if not torch.equal(found, n_slots):
            raise ValueError(
                f"placeholder count per prompt {found.tolist()} != items * tokens_per_item {n_slots.tolist()}"
            )
        return PromptBatch(
            input_ids=input_ids,
            attention_mask=attention_mask,
            labels=labels_t,
            n_slots=n_slots,
            prompt_lengths=torch.tensor([len(p) for p in prompts], dtype=torch.long),
        )


def prompt_items(
    history: torch.Tensor, candidates: torch.Tensor, with_candidates: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """The items a prompt shows, (B, S): the non-zero history (oldest first), then the candidates when they
    are listed (`with_candidates`), 0-padded; and valid (B, S) bool. candidates (B, C) must be >= 1."""
    if (candidates <= 0).any():
        raise ValueError("candidates must be item indices >= 1 (0 is padding)")
    full = torch.cat([history, candidates], 1) if with_candidates else history
    valid = full != 0
    order = torch.argsort((~valid).to(torch.int8), dim=1, stable=True)  # valid first, order kept
    items, valid = full.gather(1, order), valid.gather(1, order)
    width = max(int(valid.sum(1).max()), 1)
    return items[:, :width], valid[:, :width]


def scatter_slots(
    embeds: torch.Tensor, input_ids: torch.Tensor, slots: list[tuple[int, torch.Tensor, str]]
) -> torch.Tensor:
    """embeds (B, T, d) with the rows of each placeholder replaced, by one ``masked_scatter`` per slot.

    slots: (token id, vectors (N, d) in placeholder order (row-major over the batch), name for errors).
    Raises ValueError when a placeholder count differs from the number of vectors, or the widths differ.
    """
    for token_id, vectors, name in slots:
        mask = input_ids == token_id  # (B, T)
        n_slots = int(mask.sum())
        if n_slots != vectors.shape[0]:
            raise ValueError(f"prompt has {n_slots} {name} placeholders but {vectors.shape[0]} vectors")
        if vectors.shape[-1] != embeds.shape[-1]:
            raise ValueError(f"vectors have dim {vectors.shape[-1]}, backbone expects {embeds.shape[-1]}")
        mask3 = mask.unsqueeze(-1).expand_as(embeds)  # (B, T, d)
        embeds = embeds.masked_scatter(mask3, vectors.to(embeds.dtype))
    return embeds
