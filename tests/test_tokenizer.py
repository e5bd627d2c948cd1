"""The target tokenizer: ids equal the layout's, no BOS added, decode/encode round trips, loadable by AutoTokenizer."""

import numpy as np
import pytest
from transformers import AutoTokenizer

from vllm_padrec.catalog import ItemCatalog, TokenLayout
from vllm_padrec.target.tokenizer import build_tokenizer


@pytest.fixture(scope="module")
def catalog() -> ItemCatalog:
    rng = np.random.default_rng(0)
    codes = rng.integers(0, [7, 5, 9, 3], size=(60, 4))
    codes[1] = codes[0]  # a collision: the catalog grows the last codebook
    return ItemCatalog([f"i{n}" for n in range(60)], codes, codebook_sizes=(7, 5, 9, 3))


def test_vocabulary_ids_equal_layout_ids(catalog):
    tokenizer = build_tokenizer(catalog.layout)
    strings = catalog.layout.token_strings()
    assert tokenizer.convert_tokens_to_ids(strings) == list(range(catalog.layout.vocab_size))
    assert len(tokenizer) == catalog.layout.vocab_size
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (
        TokenLayout.PAD,
        TokenLayout.BOS,
        TokenLayout.EOS,
        TokenLayout.UNK,
    )


def test_random_renderings_round_trip(catalog):
    tokenizer = build_tokenizer(catalog.layout)
    rng = np.random.default_rng(1)
    for _ in range(50):
        history = rng.integers(0, len(catalog), size=rng.integers(1, 8)).tolist()
        items = rng.integers(0, len(catalog), size=rng.integers(1, 6)).tolist()
        ids = catalog.render_prompt(history) + catalog.render_completion(items)
        text = tokenizer.decode(ids)
        assert " " not in text
        assert tokenizer.encode(text) == ids  # no BOS added: the text starts with <s> already
        assert tokenizer(text)["input_ids"] == ids


def test_whitespace_is_ignored_and_unknown_text_is_unk(catalog):
    tokenizer = build_tokenizer(catalog.layout)
    ids = catalog.render_prompt([3, 4])
    spaced = " ".join(tokenizer.convert_ids_to_tokens(ids))
    assert tokenizer.encode(f"  {spaced}\n") == ids
    assert tokenizer.encode("<s>hello<a_0>") == [TokenLayout.BOS, TokenLayout.UNK, catalog.layout.token_id(0, 0)]
    assert tokenizer.encode("<z_999>") == [TokenLayout.UNK]


def test_save_and_load_with_auto_tokenizer(catalog, tmp_path):
    tokenizer = build_tokenizer(catalog.layout)
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    ids = catalog.render_prompt([0, 1, 2]) + catalog.render_completion([5, 6])
    assert loaded.encode(tokenizer.decode(ids)) == ids
    assert loaded.decode(ids) == tokenizer.decode(ids)
    assert loaded.bos_token_id == TokenLayout.BOS and loaded.eos_token_id == TokenLayout.EOS
    # what vLLM's detokenizer shows: the list keeps its <sep>, only <s> </s> <pad> <unk> are skipped
    completion = catalog.render_completion([5, 6])
    expected = catalog.sid_string(5) + "<sep>" + catalog.sid_string(6)
    assert loaded.decode(completion, skip_special_tokens=True) == expected
