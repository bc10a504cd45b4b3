"""zoo.text: tiny offline tokenizers, the vicuna_v1 (LLaVA-1.5) and showo (Show-o / UniCTokens)
templates, answer-only labels at exact positions, truncation that is never silent."""
import logging

import pytest
import torch

from zoo.errors import ConfigError
from zoo.text import (IGNORE_INDEX, SHOWO, VICUNA_V1, TruncationCount, build_tokenizer, collate_conversations,
                      encode_conversation, get_template)

CAPTIONS = ["a red circle to the left of a blue square", "two green triangles", "a yellow star above a red ring",
            "what color is the circle ?", "how many shapes are there ?"]
SYSTEM = VICUNA_V1.system
CONVERSATION = [
    {"from": "human", "value": "what color is the circle?\n<image>"},
    {"from": "gpt", "value": "red"},
    {"from": "human", "value": "how many shapes?"},
    {"from": "gpt", "value": "two shapes"},
]


@pytest.fixture(scope="module")
def words():
    return build_tokenizer(CAPTIONS + [SYSTEM, "USER: ASSISTANT:"], special_tokens=["<image>"], kind="wordlevel",
                           vocab_size=200, add_bos=True)


@pytest.fixture(scope="module")
def bpe():
    return build_tokenizer(CAPTIONS + [SYSTEM, "USER: ASSISTANT:"], special_tokens=["<image>"], kind="bpe",
                           vocab_size=400, add_bos=True)


def test_build_tokenizer_is_deterministic_and_round_trips(tmp_path, words, bpe):
    from transformers import AutoTokenizer

    assert (words.pad_token_id, words.bos_token_id, words.eos_token_id, words.unk_token_id) == (0, 1, 2, 3)
    assert words.convert_tokens_to_ids("<image>") == 4
    again = build_tokenizer(CAPTIONS + [SYSTEM, "USER: ASSISTANT:"], special_tokens=["<image>"], kind="wordlevel",
                            vocab_size=200, add_bos=True)
    assert again.get_vocab() == words.get_vocab()
    assert build_tokenizer(CAPTIONS + [SYSTEM, "USER: ASSISTANT:"], special_tokens=["<image>"], kind="bpe",
                           vocab_size=400, add_bos=True).get_vocab() == bpe.get_vocab()
    # most frequent words first, ties by text: "a" (4x) then "?" ... ; unseen words are <unk>
    assert words("a red purple circle")["input_ids"] == [1, words.convert_tokens_to_ids("a"),
                                                         words.convert_tokens_to_ids("red"), 3,
                                                         words.convert_tokens_to_ids("circle")]
    assert words.convert_ids_to_tokens([5]) == ["a"]
    text = "a blue ring<image>, 3 stars!"
    assert bpe.decode(bpe(text)["input_ids"], skip_special_tokens=False) == "<s>" + text  # byte level: exact
    for tokenizer in (words, bpe):
        tokenizer.save_pretrained(tmp_path / "tok")
        loaded = AutoTokenizer.from_pretrained(tmp_path / "tok")
        assert loaded(text)["input_ids"] == tokenizer(text)["input_ids"]
        assert (loaded.pad_token, loaded.bos_token, loaded.eos_token, loaded.unk_token) == ("<pad>", "<s>", "</s>",
                                                                                            "<unk>")
    phi = build_tokenizer(CAPTIONS, bos_token="<|endoftext|>", eos_token="<|endoftext|>", kind="bpe", vocab_size=300)
    assert phi.bos_token_id == phi.eos_token_id == 1 and phi("a red")["input_ids"][0] != 1  # no BOS added
    with pytest.raises(ConfigError, match="kind must be"):
        build_tokenizer(CAPTIONS, kind="unigram")
    with pytest.raises(ConfigError, match="no room"):
        build_tokenizer(CAPTIONS, vocab_size=4)
    with pytest.raises(ConfigError, match="at least one"):
        build_tokenizer([])


def test_vicuna_v1_renders_as_llava_1_5():
    assert VICUNA_V1.render(CONVERSATION) == (
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the user's questions. USER: <image>\nwhat color is the circle? "
        "ASSISTANT: red</s>USER: how many shapes? ASSISTANT: two shapes</s>")
    assert VICUNA_V1.render(CONVERSATION[:1], add_generation_prompt=True).endswith(
        "USER: <image>\nwhat color is the circle? ASSISTANT:")
    # chat-style turns render the same; a first turn from the assistant is skipped (LLaVA does)
    chat = [{"role": "assistant", "content": "hello"}] + [
        {"role": "user" if t["from"] == "human" else "assistant", "content": t["value"]} for t in CONVERSATION]
    assert VICUNA_V1.render(chat) == VICUNA_V1.render(CONVERSATION)
    assert get_template("llava_v1") is VICUNA_V1 and get_template("phi1.5") is SHOWO


def test_showo_renders_as_unictokens_phi_format():
    assert SHOWO.render(CONVERSATION) == ("USER: what color is the circle? ASSISTANT: red<|endoftext|>"
                                          "USER: how many shapes? ASSISTANT: two shapes<|endoftext|>")
    # the inference prompt of eval/eval_p_mmu.py: 'USER: ' + question + ' ASSISTANT:'
    assert SHOWO.render(CONVERSATION[:1], add_generation_prompt=True) == "USER: what color is the circle? ASSISTANT:"


def test_vicuna_v1_labels_at_exact_positions(words):
    encoded = encode_conversation(words, CONVERSATION, "vicuna_v1")
    tokens = words.convert_ids_to_tokens(encoded["input_ids"].tolist())
    system = words.convert_ids_to_tokens(words(SYSTEM, add_special_tokens=False)["input_ids"])
    head = ["<s>", *system, "USER", ":", "<image>", "what", "color", "is", "the", "circle", "?", "ASSISTANT", ":"]
    assert tokens == head + ["red", "</s>", "USER", ":", "how", "many", "shapes", "?", "ASSISTANT", ":",
                             "two", "shapes", "</s>"]
    labelled = [i for i, label in enumerate(encoded["labels"].tolist()) if label != IGNORE_INDEX]
    n = len(head)
    assert labelled == [n, n + 1, n + 10, n + 11, n + 12]  # red </s>, two shapes </s>
    assert encoded["labels"][labelled].tolist() == encoded["input_ids"][labelled].tolist()
    assert encoded["truncated"] == 0


def _llava_v1_arithmetic(tokenizer, prompt):
    """LLaVA's preprocess_v1 label rule for a legacy tokenizer, from its token counts (the reference)."""
    ids = tokenizer(prompt)["input_ids"]
    target = list(ids)
    cursor = 1
    target[:1] = [IGNORE_INDEX]
    for part in prompt.split("</s>"):
        if part == "":
            break
        instruction, answer = part.split(" ASSISTANT: ")
        round_len = len(tokenizer(part)["input_ids"])
        instruction_len = len(tokenizer(instruction + " ASSISTANT: ")["input_ids"]) - 2
        target[cursor:cursor + instruction_len] = [IGNORE_INDEX] * instruction_len
        cursor += round_len
    target[cursor:] = [IGNORE_INDEX] * (len(target) - cursor)
    assert cursor == len(ids)  # no "tokenization mismatch" for this tokenizer
    return target


def _showo_arithmetic(tokenizer, prompt):
    """UniCTokens' preprocess_v0 label rule (Phi: no BOS), from its token counts (the reference)."""
    ids = tokenizer(prompt)["input_ids"]
    target, cursor = list(ids), 0
    for part in prompt.split("<|endoftext|>"):
        if part == "":
            break
        instruction, _ = part.split(" ASSISTANT: ")
        round_len = len(tokenizer(part)["input_ids"]) + 1
        instruction_len = len(tokenizer(instruction + " ASSISTANT: ")["input_ids"]) - 1
        target[cursor:cursor + instruction_len] = [IGNORE_INDEX] * instruction_len
        cursor += round_len
    target[cursor:] = [IGNORE_INDEX] * (len(target) - cursor)
    assert cursor == len(ids)
    return target


def test_labels_equal_the_official_token_count_rules_on_byte_level_bpe(bpe):
    conversation = [turn if "<image>" not in turn["value"] else {**turn, "value": "what color is the circle?"}
                    for turn in CONVERSATION]
    encoded = encode_conversation(bpe, conversation, "vicuna_v1")
    assert encoded["labels"].tolist() == _llava_v1_arithmetic(bpe, VICUNA_V1.render(conversation))
    tokens = bpe.convert_ids_to_tokens(encoded["input_ids"][encoded["labels"] != IGNORE_INDEX].tolist())
    assert "".join(tokens).replace("Ġ", " ") == " red</s> two shapes</s>"  # the space after ':' is learned
    phi = build_tokenizer(CAPTIONS + ["USER: ASSISTANT:"], bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                          kind="bpe", vocab_size=400)
    encoded = encode_conversation(phi, CONVERSATION, "showo")
    assert encoded["labels"].tolist() == _showo_arithmetic(phi, SHOWO.render(CONVERSATION))
    tokens = phi.convert_ids_to_tokens(encoded["input_ids"][encoded["labels"] != IGNORE_INDEX].tolist())
    assert "".join(tokens).replace("Ġ", " ") == " red<|endoftext|> two shapes<|endoftext|>"


def test_truncation_warns_and_counts(words, caplog):
    full = encode_conversation(words, CONVERSATION, "vicuna_v1")
    length = len(full["input_ids"])
    counter = TruncationCount()
    with caplog.at_level(logging.WARNING, logger="zoo.text"):
        cut = counter.add(encode_conversation(words, CONVERSATION, "vicuna_v1", max_length=length - 4), key="s1")
        counter.add(encode_conversation(words, CONVERSATION, "vicuna_v1", max_length=length))
    assert cut["truncated"] == 4 and len(cut["input_ids"]) == length - 4
    assert torch.equal(cut["labels"], full["labels"][:-4])
    assert f"cut 4 of {length} tokens to max_length={length - 4} (3 answer tokens lost)" in caplog.text
    assert len(caplog.records) == 1
    assert str(counter) == "1 of 2 conversations cut (4 tokens), e.g. ['s1']"


def test_image_tokens_expand_and_are_never_labels(words):
    encoded = encode_conversation(words, CONVERSATION, "vicuna_v1", image_tokens=4)
    image = words.convert_tokens_to_ids("<image>")
    where = (encoded["input_ids"] == image).nonzero().flatten().tolist()
    assert len(where) == 4 and where == list(range(where[0], where[0] + 4))
    assert (encoded["labels"][where] == IGNORE_INDEX).all()
    assert len(encoded["input_ids"]) == len(encode_conversation(words, CONVERSATION, "vicuna_v1")["input_ids"]) + 3


def test_bad_conversations_and_tokenizers_are_named(words):
    with pytest.raises(ConfigError, match="turn 1 is from the user, expected the assistant"):
        encode_conversation(words, [{"from": "human", "value": "a"}, {"from": "human", "value": "b"}])
    with pytest.raises(ConfigError, match="turn 0 has from/role 'robot'"):
        encode_conversation(words, [{"from": "robot", "value": "a"}])
    with pytest.raises(ConfigError, match="no token '<\\|endoftext\\|>'"):
        encode_conversation(words, CONVERSATION, "showo")
    plain = build_tokenizer(CAPTIONS, kind="wordlevel")
    with pytest.raises(ConfigError, match="no token '<image>'"):
        encode_conversation(plain, CONVERSATION, "vicuna_v1")
    with pytest.raises(ConfigError, match="unknown chat template 'chatml'"):
        encode_conversation(words, CONVERSATION, "chatml")
    with pytest.raises(ConfigError, match="ends with a user turn"):
        VICUNA_V1.render(CONVERSATION, add_generation_prompt=True)


def test_collate_and_the_loss_falls_only_on_answers(words):
    from transformers import LlamaConfig, LlamaForCausalLM

    items = [encode_conversation(words, CONVERSATION, "vicuna_v1"),
             encode_conversation(words, CONVERSATION[:2], "vicuna_v1")]
    batch = collate_conversations(items, words.pad_token_id)
    assert batch["input_ids"].shape == (2, len(items[0]["input_ids"]))
    short = len(items[1]["input_ids"])
    assert batch["attention_mask"][1].tolist() == [1] * short + [0] * (batch["input_ids"].shape[1] - short)
    left = collate_conversations(items, words.pad_token_id, padding_side="left")
    assert torch.equal(left["input_ids"][1, -short:], items[1]["input_ids"])
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(words), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=4))
    out = model(**batch)
    logits = out.logits[:, :-1].reshape(-1, len(words))
    targets = batch["labels"][:, 1:].reshape(-1)
    keep = targets != IGNORE_INDEX
    assert int(keep.sum()) == 5 + 2  # red </s> two shapes </s> ; red </s>
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(logits[keep], targets[keep]))


# ---------------------------------------------------------------------------- Llama / Vicuna SentencePiece BPE

def _llama_tokenizer(legacy: bool):
    """transformers' LlamaTokenizer (the class Vicuna's tokenizer loads as) on a hand-made vocabulary.

    Like Llama's: <unk> <s> </s>, the 256 byte-fallback tokens (so "\\n" is <0x0A> = 13), then
    single characters and whole pieces. As in Vicuna's real vocabulary, "USER" after a space is two
    pieces ("▁US" "ER") but one piece ("USER") where no space precedes it, which is what makes
    LLaVA's non-legacy label arithmetic subtract one per later round.
    """
    from transformers import LlamaTokenizer

    words = ["▁US", "USER", "ER", "▁ASS", "IST", "ANT", "▁what", "▁color", "▁is", "▁red", "▁A", "▁chat"]
    merges = []
    for word in words:  # each piece built left to right, one character at a time
        merges += [(word[:i - 1], word[i - 1]) for i in range(2, len(word) + 1) if (word[:i - 1], word[i - 1]) not in merges]
    vocab = {token: i for i, token in enumerate(["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)])}
    for token in list("▁abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,:?") + \
            [p for a, b in merges for p in (a, b, a + b)]:
        vocab.setdefault(token, len(vocab))
    tokenizer = LlamaTokenizer(vocab=vocab, merges=merges, legacy=legacy, add_bos_token=True)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    return tokenizer


LLAMA_CONVERSATION = [{"from": "human", "value": "<image>\nwhat is red?"}, {"from": "gpt", "value": "1. red"},
                      {"from": "human", "value": "what color?"}, {"from": "gpt", "value": "red"}]


def _tokenizer_image_token(tokenizer, prompt, image_id):
    """LLaVA's mm_utils.tokenizer_image_token rule (the reference): pieces around <image> tokenized
    apart, the BOS of later pieces dropped, the image id in between."""
    pieces = [tokenizer(p)["input_ids"] for p in prompt.split("<image>")]
    skip = 1 if pieces[0] and pieces[0][0] == tokenizer.bos_token_id else 0
    ids = pieces[0][:]
    for piece in pieces[1:]:
        ids += [image_id] + piece[skip:]
    return ids


def _preprocess_v1(tokenizer, prompt, image_id):
    """LLaVA's train.preprocess_v1 labels (the reference), token counts of pieces, for has_image data:
    BOS masked, per round (split at </s>) the instruction up to ' ASSISTANT: ' masked (its count - 2),
    - 1 per later round for non-legacy tokenizers (tokenizers >= 0.14); a count that disagrees with
    the real length masks everything."""
    ids = _tokenizer_image_token(tokenizer, prompt, image_id)
    target, cursor = list(ids), 1
    target[0] = IGNORE_INDEX
    for index, round_text in enumerate(prompt.split("</s>")):
        if round_text == "":
            break
        instruction = round_text.split(" ASSISTANT: ")[0] + " ASSISTANT: "
        round_len = len(_tokenizer_image_token(tokenizer, round_text, image_id))
        instruction_len = len(_tokenizer_image_token(tokenizer, instruction, image_id)) - 2
        if index and not tokenizer.legacy:
            round_len, instruction_len = round_len - 1, instruction_len - 1
        target[cursor:cursor + instruction_len] = [IGNORE_INDEX] * instruction_len
        cursor += round_len
    target[cursor:] = [IGNORE_INDEX] * (len(target) - cursor)
    return ids, target if cursor == len(ids) else [IGNORE_INDEX] * len(ids)


@pytest.mark.parametrize("legacy", [True, False])
def test_vicuna_v1_ids_and_labels_equal_llava_with_a_llama_tokenizer(legacy):
    import dataclasses

    tokenizer = _llama_tokenizer(legacy)
    template = dataclasses.replace(VICUNA_V1, system="A chat.")
    prompt = template.render(LLAMA_CONVERSATION)
    assert prompt == "A chat. USER: <image>\nwhat is red? ASSISTANT: 1. red</s>USER: what color? ASSISTANT: red</s>"
    image = tokenizer.convert_tokens_to_ids("<image>")
    encoded = encode_conversation(tokenizer, LLAMA_CONVERSATION, template)
    tokens = tokenizer.convert_ids_to_tokens(encoded["input_ids"].tolist())
    # worked out from the official rules: "A chat. USER: " and "\nwhat ... </s>" tokenized apart, so the
    # second piece starts with its own "▁" before <0x0A>; after </s> a legacy tokenizer starts a new
    # word ("▁US" "ER"), a non-legacy one does not ("USER")
    user2 = ["▁US", "ER"] if legacy else ["USER"]
    want = (["<s>", "▁A", "▁chat", ".", "▁US", "ER", ":", "▁", "<image>", "▁", "<0x0A>", "w", "h", "a", "t", "▁is",
             "▁red", "?", "▁ASS", "IST", "ANT", ":", "▁", "1", ".", "▁red", "</s>"]
            + user2 + [":", "▁what", "▁color", "?", "▁ASS", "IST", "ANT", ":", "▁red", "</s>"])
    assert tokens == want
    assert encoded["input_ids"][10] == 13  # "\n" is Llama's <0x0A>
    labelled = [i for i, label in enumerate(encoded["labels"].tolist()) if label != IGNORE_INDEX]
    n = len(user2)
    assert labelled == [22, 23, 24, 25, 26, 35 + n, 36 + n]  # "▁ 1 . ▁red </s>", "▁red </s>"
    ids, labels = _preprocess_v1(tokenizer, prompt, image)
    assert encoded["input_ids"].tolist() == ids and encoded["labels"].tolist() == labels
    # the one-pass tokenization of the same text is what LLaVA did not train on, for non-legacy Llama
    # tokenizers (Vicuna-v1.5's): no "▁" after <image>
    one_pass = tokenizer(prompt)["input_ids"]
    assert (one_pass == ids) == legacy
    # the inference prompt of LLaVA's evaluation scripts: the same rule
    generation = encode_conversation(tokenizer, LLAMA_CONVERSATION[:1], template, add_generation_prompt=True)
    assert generation["input_ids"].tolist() == _tokenizer_image_token(
        tokenizer, "A chat. USER: <image>\nwhat is red? ASSISTANT:", image) == ids[:22]
    assert (generation["labels"] == IGNORE_INDEX).all()
    # image tokens expand in place; labels move with them
    expanded = encode_conversation(tokenizer, LLAMA_CONVERSATION, template, image_tokens=4)
    assert expanded["input_ids"].tolist() == ids[:8] + [image] * 4 + ids[9:]
    assert expanded["labels"].tolist() == labels[:8] + [IGNORE_INDEX] * 4 + labels[9:]


@pytest.mark.parametrize("legacy", [True, False])
def test_plain_template_equals_llava_pretraining(legacy):
    """LLaVA's pretraining format: "<image>" + caption + "\\n", the question dropped; labels on
    everything after the image (preprocess_plain masks len(tokenizer_image_token("<image>")) tokens)."""
    tokenizer = _llama_tokenizer(legacy)
    image = tokenizer.convert_tokens_to_ids("<image>")
    record = [{"from": "human", "value": "<image>\nwhat is red?"}, {"from": "gpt", "value": "a red chat"}]
    assert get_template("plain").render(record) == "<image>a red chat\n"
    encoded = encode_conversation(tokenizer, record, "plain", image_tokens=2)
    tokens = tokenizer.convert_ids_to_tokens(encoded["input_ids"].tolist())
    assert tokens == ["<s>", "<image>", "<image>", "▁", "a", "▁red", "▁chat", "<0x0A>"]
    official = _tokenizer_image_token(tokenizer, "<image>a red chat\n", image)
    masked = len(_tokenizer_image_token(tokenizer, "<image>", image))
    assert official == [1, image] + encoded["input_ids"].tolist()[3:] and masked == 2
    assert encoded["labels"].tolist() == [IGNORE_INDEX] * 3 + official[masked:]
    prompt = encode_conversation(tokenizer, record[:1], "plain", add_generation_prompt=True)
    assert prompt["input_ids"].tolist() == [1, image]
