"""SoM-LLaVA data: instruction pool, listing answers, LLaVA conversation files, mixing."""
from __future__ import annotations

import json
import random

import pytest

from zoo.errors import ConfigError, OutputExistsError
from zoo.multimodal.som_llava import data


def test_instruction_pool_is_the_releases_42():
    pool = data.instruction_pool()
    assert len(pool) == 42 and len(set(pool)) == 42
    assert pool[0].startswith("I have labeled a bright numeric ID at the center for each visual object")
    assert pool[-1].startswith("Here is an image with numeric tags on top of some objects")
    rng = random.Random(0)
    drawn = {data.sample_instruction(rng) for _ in range(2000)}
    assert drawn == set(pool)  # every paraphrase gets used


def test_listing_record_numbered_in_tag_order_with_uncertain_items():
    items = [data.Item("1", "a red circle"), data.Item("2", "a blue square, mostly hidden", sure=False),
             data.Item("3", "Green grass")]
    rec = data.listing_record("s1", "images/s1.png", items, random.Random(1))
    human, gpt = rec["conversations"]
    assert human["from"] == "human" and human["value"].startswith("<image>\n")
    assert human["value"][len("<image>\n"):] in data.instruction_pool()
    assert gpt == {"from": "gpt", "value": "1. A red circle.\n2. Not sure: possibly a blue square, mostly hidden.\n"
                                           "3. Green grass."}
    assert rec["id"] == "s1" and rec["image"] == "images/s1.png"


def test_records_validate_turns_and_placeholders(tmp_path):
    good = data.qa_record("q", "a.png", [("What color is tag 2?", "Red."), ("And tag 3?", "Blue.")])
    assert [t["from"] for t in good["conversations"]] == ["human", "gpt", "human", "gpt"]
    assert good["conversations"][0]["value"] == "<image>\nWhat color is tag 2?"
    text_only = data.record("t", None, [("Hi", "Hello.")])
    assert "image" not in text_only and text_only["conversations"][0]["value"] == "Hi"
    bad = [
        ({"id": "x", "conversations": [{"from": "gpt", "value": "a"}]}, "alternate"),
        ({"id": "x", "image": "a.png", "conversations": [{"from": "human", "value": "<image><image>"},
                                                          {"from": "gpt", "value": "b"}]}, "placeholders"),
        ({"id": "x", "conversations": [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}]},
         "no 'image'"),
        ({"id": "x"}, "conversations"),
    ]
    for item, message in bad:
        with pytest.raises(ConfigError, match=message):
            data.validate_record(item)
    path = data.write_conversations([good, text_only], tmp_path / "c.json")
    assert json.loads(path.read_text()) == [good, text_only]
    assert data.read_conversations(path) == [good, text_only]
    with pytest.raises(OutputExistsError):
        data.write_conversations([good], path)
    (tmp_path / "c.jsonl").write_text(json.dumps(good) + "\n\n" + json.dumps(text_only) + "\n")
    assert data.read_conversations(tmp_path / "c.jsonl") == [good, text_only]
    (tmp_path / "bad.json").write_text(json.dumps([good, bad[0][0]]))
    with pytest.raises(ConfigError, match="record 1"):
        data.read_conversations(tmp_path / "bad.json")


def test_mix_by_ratio_keeps_all_plain_records():
    som = [{"id": f"s{i}", "conversations": []} for i in range(50)]
    plain = [{"id": f"p{i}", "conversations": []} for i in range(90)]
    everything = data.mix(som, plain, seed=3)
    assert sorted(r["id"] for r in everything) == sorted(r["id"] for r in som + plain)
    assert [r["id"] for r in everything] != [r["id"] for r in plain + som]  # shuffled
    mixed = data.mix(som, plain, som_fraction=0.1, seed=3)
    assert len(mixed) == 100 and sum(r["id"].startswith("s") for r in mixed) == 10
    assert data.mix(som, plain, som_fraction=0.1, seed=3) == mixed  # seeded
    with pytest.raises(ConfigError, match="only 50 exist"):
        data.mix(som, plain, som_fraction=0.5)
    with pytest.raises(ConfigError):
        data.mix(som, plain, som_fraction=1.0)
