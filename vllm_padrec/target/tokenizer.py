"""The target's tokenizer: one word-level token per layout entry, ids equal to the layout's ids.

Text is a run of ``<...>`` tokens (``"<s><a_1><b_2><c_3><d_4><rec>"``); whitespace between them is
ignored and anything that is not a layout token becomes ``<unk>``. Decoding joins tokens without
spaces, so ``decode(encode(text)) == text`` for text without whitespace. No BOS is added on encode:
the prompts we render (and send to vLLM's ``/v1/completions``) already start with ``<s>``.

    tokenizer = build_tokenizer(catalog.layout)
    tokenizer.save_pretrained(folder)           # AutoTokenizer.from_pretrained(folder) loads it
"""

from __future__ import annotations

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from vllm_padrec.catalog import TokenLayout

TOKEN_PATTERN = r"<[^<>\s]*>"  # one layout token; the text between tokens is split off and dropped


def build_tokenizer(layout: TokenLayout) -> PreTrainedTokenizerFast:
    """A fast tokenizer whose vocabulary is ``layout.token_strings()`` in id order."""
    backend = Tokenizer(models.WordLevel(vocab=dict(layout.ids_by_token), unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex(TOKEN_PATTERN), behavior="isolated")]
    )
    backend.decoder = decoders.Fuse()  # "<a_1>", "<b_2>" -> "<a_1><b_2>"
    # no post-processor: encode adds nothing (no BOS, no EOS)
    names = TokenLayout.SPECIAL_TOKENS
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=names[TokenLayout.PAD],
        bos_token=names[TokenLayout.BOS],
        eos_token=names[TokenLayout.EOS],
        unk_token=names[TokenLayout.UNK],
        add_bos_token=False,
        add_eos_token=False,
        clean_up_tokenization_spaces=False,
        model_max_length=1 << 20,
        padding_side="left",
    )
