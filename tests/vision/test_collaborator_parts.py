"""Modeling Collaborator pieces on hand-made inputs: concepts, prompts, the LLM answer formats,
the template LLM, retrieval, active learning, metrics, the Annotator (retries, unknowns, caching,
a failing endpoint), the review sheet, and the embedding cache."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from zoo.errors import ConfigError, OutputExistsError, ToolError
from zoo.tools import CallCache
from zoo.vision.modeling_collaborator.active import select, uncertainty_scores
from zoo.vision.modeling_collaborator.annotator import Annotation, Annotator
from zoo.vision.modeling_collaborator.concept import Concept, load_concept, save_concept
from zoo.vision.modeling_collaborator.decompose import decompose
from zoo.vision.modeling_collaborator.distill import class_weights
from zoo.vision.modeling_collaborator.evaluate import best_threshold, binary_metrics, parse_label
from zoo.vision.modeling_collaborator.offline import TemplateLLM, read_description
from zoo.vision.modeling_collaborator.prompts import render
from zoo.vision.modeling_collaborator.queries import search_queries
from zoo.vision.modeling_collaborator.retrieve import mine, top_k
from zoo.vision.modeling_collaborator.review import (disagreements, parse_description, read_sheet, refine_description,
                                                     write_sheet)

CALM = "A calm scene: few objects, all in cool colours, nothing red."


class Scripted:
    """An LLM that answers from a list, recording prompts."""

    tool_id = "scripted"

    def __init__(self, *answers):
        self.answers, self.prompts = list(answers), []

    def generate(self, prompt, **settings):
        self.prompts.append(prompt)
        return self.answers.pop(0)


class FixedVQA:
    """A VQA tool with fixed answers per question, counting calls."""

    tool_id = "fixed-vqa"

    def __init__(self, answers, caption="two blue circles"):
        self.table, self.caption_text, self.calls = answers, caption, 0

    def answer(self, image, question, **settings):
        self.calls += 1
        return self.table[question]

    def caption(self, image, **settings):
        self.calls += 1
        return self.caption_text


@pytest.fixture
def image(tmp_path):
    from PIL import Image

    path = tmp_path / "img.png"
    Image.new("RGB", (16, 16), (40, 80, 220)).save(path)
    return path


# ---------------------------------------------------------------------------- concepts and prompts

def test_concept_file_errors_and_versioned_edits(tmp_path):
    (tmp_path / "c.yaml").write_text("name: calm scene\ndescription: >-\n  " + CALM + "\n"
                                     "examples: {positive: [a.png]}\n")
    concept = load_concept(tmp_path / "c.yaml")
    assert concept.version == 1 and concept.description == CALM
    assert concept.examples["positive"] == [str(tmp_path / "a.png")]
    (tmp_path / "bad.yaml").write_text("name: calm scene\n")
    with pytest.raises(ConfigError, match="no description"):
        load_concept(tmp_path / "bad.yaml")
    (tmp_path / "typo.yaml").write_text("name: x\ndescription: y\ndescripton: z\n")
    with pytest.raises(ConfigError, match="unknown keys"):
        load_concept(tmp_path / "typo.yaml")
    edited = concept.edit(description=CALM + " At most two objects.", reason="review").edit(negative=["stripes"])
    assert edited.version == 3 and [h["version"] for h in edited.history] == [1, 2]
    assert edited.history[0]["description"] == CALM and edited.history[0]["replaced_because"] == "review"
    assert edited.digest() != concept.digest()
    save_concept(edited, tmp_path / "v3.yaml")
    assert load_concept(tmp_path / "v3.yaml") == edited
    with pytest.raises(OutputExistsError):
        save_concept(edited, tmp_path / "v3.yaml")


def test_render_names_a_missing_placeholder_and_custom_templates_win(tmp_path):
    with pytest.raises(ConfigError, match="description"):
        render("attributes", None, name="x")
    (tmp_path / "attributes.txt").write_text("Task: concept attributes\nConcept {name}: {description}!")
    assert render("attributes", tmp_path, name="x", description="y") == "Task: concept attributes\nConcept x: y!"


def test_decompose_and_queries_read_numbered_lists():
    llm = Scripted("Attributes:\n1. positive: few objects\n2) Negative - a red object\n3. calm mood",
                   "Here you go:\n1. How many objects are there?\n2. Is there a red object?\n3. is there a red object?")
    result = decompose(llm, Concept("calm scene", CALM))
    assert result.attributes == [{"polarity": "positive", "text": "few objects"},
                                 {"polarity": "negative", "text": "a red object"},
                                 {"polarity": None, "text": "calm mood"}]
    assert result.questions == ["How many objects are there?", "Is there a red object?"]
    assert "2. negative: a red object" in llm.prompts[1] and "at most 12" in llm.prompts[1]
    with pytest.raises(ToolError, match="no numbered list"):
        decompose(Scripted("I would rather not."), Concept("calm scene", CALM))
    queries = search_queries(Scripted("1. positive: a blue circle\n2. negative: \"a red star\"\n3. a green square"),
                             Concept("calm scene", CALM))
    assert queries == [{"text": "a blue circle", "kind": "positive"}, {"text": "a red star", "kind": "negative"},
                       {"text": "a green square", "kind": "positive"}]


def test_template_llm_reads_descriptions_and_decides():
    c = read_description(CALM + " Striped or checkered patterns are not calm. Three or more objects are too many: "
                                "at most two objects. Pink is fine.")
    assert (c.max_objects, c.min_objects) == (2, None)
    assert c.allowed_colors == {"green", "cyan", "blue", "purple", "pink"} and c.forbidden_colors == {"red"}
    assert c.forbidden_textures == {"striped", "checkered"} and c.ignored == ["a calm scene"]
    llm = TemplateLLM()
    result = decompose(llm, Concept("calm scene", CALM))
    assert result.questions == ["How many objects are there?", "Is there a red object?", "Is there an orange object?",
                                "Is there a yellow object?", "Is there a pink object?"]
    vqa = FixedVQA({"How many objects are there?": "3", "Is there a red object?": "no",
                    "Is there an orange object?": "yes", "Is there a yellow object?": "no",
                    "Is there a pink object?": "no"})
    prompt = Annotator(llm, vqa, Concept("calm scene", CALM), result.questions).prompt("x", [
        {"question": q, "answer": vqa.table[q]} for q in result.questions])
    answer = llm.generate(prompt)
    assert answer.splitlines() == [
        "The image has 3 objects and the description allows at most 3: this fits.",
        "There is an orange object, which the description rules out.",
        "Parts of the description I could not check: a calm scene.",
        "Final answer: No"]
    refine = render("refine", None, name="calm scene", description=CALM, disagreements=(
        "- image 1: ... User comment: Striped patterns are not calm. At most two objects.\n"
        "- image 2: ... User comment: Striped patterns are not calm.\n- image 3: ... User comment: Just no."))
    assert llm.generate(refine) == f"Description: {CALM} Striped patterns are not calm. At most two objects."


# ---------------------------------------------------------------------------- retrieval, AL, metrics

def test_top_k_matches_a_full_sort_across_chunks():
    rng = np.random.default_rng(0)
    pool, queries = rng.normal(size=(1003, 8)).astype(np.float32), rng.normal(size=(3, 8)).astype(np.float32)
    indices, scores = top_k(pool, queries, 7, chunk=100)
    full = queries @ pool.T
    expected = np.argsort(-full, axis=1)[:, :7]
    assert np.array_equal(indices, expected)
    np.testing.assert_allclose(scores, np.take_along_axis(full, expected, 1), rtol=1e-6)
    assert top_k(pool[:4], queries, 10)[0].shape == (3, 4)


def test_mine_unions_queries_and_marks_kind():
    pool = np.eye(4, dtype=np.float32)
    queries = np.array([[1, 0.5, 0, 0], [0, 0, 0, 1]], dtype=np.float32)
    found = mine(pool, queries, ["positive", "negative"], per_query=2, per_negative_query=1)
    assert [(f["index"], f["kind"], f["queries"]) for f in found] == [(0, "positive", [0]), (3, "negative", [1]),
                                                                       (1, "positive", [0])]


def test_active_learning_picks_the_most_uncertain_unlabelled_images():
    p = np.array([0.9, 0.52, 0.1, 0.45, 0.5, 0.7])
    assert select(p, exclude=[4], k=3) == [1, 3, 5]
    assert select(p, exclude=[4], k=3, strategy="entropy") == [1, 3, 5]
    assert select(p, exclude=range(6), k=3) == []
    assert select(p, exclude=[], k=2, strategy="random", seed=1) == select(p, exclude=[], k=2, strategy="random",
                                                                           seed=1)
    np.testing.assert_allclose(uncertainty_scores([0.5, 1.0]), [0.0, -1.0], atol=1e-9)
    with pytest.raises(ConfigError, match="strategy"):
        select(p, [], 1, strategy="loudest")


def test_class_weights_and_metrics_on_hand_made_values():
    np.testing.assert_allclose(class_weights([1, 0, 0, 0]), [2.0, 2 / 3, 2 / 3, 2 / 3], rtol=1e-6)
    m = binary_metrics([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1], threshold=0.75)
    assert m["auPR"] == pytest.approx((1 + 2 / 3) / 2)
    assert (m["precision"], m["recall"], m["F1"]) == (0.5, 0.5, 0.5)
    assert best_threshold([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1]) == pytest.approx(0.4)
    assert [parse_label(v) for v in ("Yes", " no ", 1, "TRUE", "")] == [1, 0, 1, 1, None]
    with pytest.raises(ConfigError, match="maybe"):
        parse_label("maybe")
    with pytest.raises(ConfigError, match="no positive"):
        binary_metrics([0, 0], [0.1, 0.2])


# ---------------------------------------------------------------------------- the Annotator

def test_annotator_retries_then_labels_unknown(image, tmp_path):
    concept = Concept("calm scene", CALM)
    vqa = FixedVQA({"Is there a red object?": "no"})
    llm = Scripted("It looks calm to me.", "Calm, I think.\nFinal answer: **Yes**")
    a = Annotator(llm, vqa, concept, ["Is there a red object?"], retries=2).annotate(image, "img")
    assert (a.label, a.status, a.attempts, a.rationale) == (1, "ok", 2, "Calm, I think.")
    assert a.answers == [{"question": "Is there a red object?", "answer": "no"}]
    assert "Final answer: Yes" in llm.prompts[1] and llm.prompts[1].startswith(llm.prompts[0])
    never = Scripted("hmm", "hmm", "hmm")
    a = Annotator(never, vqa, concept, ["Is there a red object?"], retries=2).annotate(image, "img")
    assert (a.label, a.status, a.attempts) == (None, "unknown", 3)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    a = Annotator(never, vqa, concept, []).annotate(tmp_path / "broken.png", "broken")
    assert a.status == "unreadable" and "broken.png" in a.error and a.label is None


def test_annotator_calls_are_cached(image, tmp_path):
    concept = Concept("calm scene", CALM)
    vqa = FixedVQA({"How many objects are there?": "2", "Is there a red object?": "no"})
    cache = CallCache(tmp_path / "calls")
    first = Annotator(cache.wrap(TemplateLLM()), cache.wrap(vqa), concept,
                      ["How many objects are there?", "Is there a red object?"]).annotate(image, "img")
    assert vqa.calls == 3 and first.label == 1
    again = Annotator(CallCache(tmp_path / "calls").wrap(TemplateLLM()), CallCache(tmp_path / "calls").wrap(vqa),
                      concept, ["How many objects are there?", "Is there a red object?"]).annotate(image, "img")
    assert vqa.calls == 3 and again == first


def test_a_failing_endpoint_stops_the_annotator_and_the_rerun_resumes_from_the_cache(image, tmp_path):
    from zoo.testing.chat_server import LoopbackChat
    from zoo.tools import OpenAIChatTool

    concept = Concept("calm scene", CALM)
    llm = TemplateLLM()
    with LoopbackChat(respond=lambda body: llm.generate(body["messages"][-1]["content"])) as server:
        tool = OpenAIChatTool(server.base_url, model="m", api_key_env=None, max_retries=1, backoff=0.0)
        vqa = FixedVQA({"How many objects are there?": "1"})
        cache = CallCache(tmp_path / "calls")
        server.fail_next(503, times=2)
        annotator = Annotator(cache.wrap(tool), cache.wrap(vqa), concept, ["How many objects are there?"])
        with pytest.raises(ToolError, match="503"):
            annotator.annotate(image, "img")
        assert vqa.calls == 2  # caption and answer were asked, and are cached
        result = annotator.annotate(image, "img")
        assert result.label == 1 and vqa.calls == 2 and len(server.requests) == 3


# ---------------------------------------------------------------------------- review

def test_review_sheet_round_trip_and_errors(tmp_path):
    annotations = [Annotation("a", "/x/a.png", 1, "ok", "fits", "a blue circle"),
                   Annotation("b", "/x/b.png", 0, "ok", "red", "a red star"),
                   Annotation("c", "/x/c.png", None, "unknown", "", "three squares")]
    write_sheet(tmp_path / "sheet.csv", annotations)
    text = (tmp_path / "sheet.csv").read_text()
    assert text.splitlines()[0] == "id,path,annotator_label,caption,annotator_rationale,human_label,comment"
    filled = text.replace("a blue circle,fits,,", "a blue circle,fits,No,Stripes are not calm.") \
                 .replace("a red star,red,,", "a red star,red,no,").replace("three squares,,,", "three squares,,yes,")
    (tmp_path / "filled.csv").write_text(filled)
    answers = read_sheet(tmp_path / "filled.csv", known_ids={"a", "b", "c"})
    assert answers == {"a": {"human_label": 0, "comment": "Stripes are not calm."},
                       "b": {"human_label": 0, "comment": ""}, "c": {"human_label": 1, "comment": ""}}
    assert [d["id"] for d in disagreements(annotations, answers)] == ["a", "c"]
    (tmp_path / "bad.csv").write_text(text.replace("a blue circle,fits,,", "a blue circle,fits,maybe,"))
    with pytest.raises(ConfigError, match="row 2 \\(a\\) human_label"):
        read_sheet(tmp_path / "bad.csv")
    with pytest.raises(ConfigError, match="no filled human_label"):
        read_sheet(tmp_path / "sheet.csv")
    (tmp_path / "other.jsonl").write_text(json.dumps({"id": "zz", "human_label": "yes"}) + "\n")
    with pytest.raises(ConfigError, match="'zz' was not in the review sheet"):
        read_sheet(tmp_path / "other.jsonl", known_ids={"a"})
    assert parse_description("Sure.\nDescription: A calm scene.\n\nHope this helps.") == "A calm scene."
    with pytest.raises(ToolError, match="review.description"):
        refine_description(Scripted("I agree with the user."), Concept("calm scene", CALM),
                           disagreements(annotations, answers))


# ---------------------------------------------------------------------------- embeddings

class CountingEmbedder:
    """Embeds 16x16 images as their mean colour (3-d), counting images."""

    embed_dim = 3

    def __init__(self):
        from zoo.image import ImageTransform

        self.image_transform = ImageTransform(resize=(4, 4))
        self.seen = 0

    def encode_image(self, pixel_values):
        self.seen += len(pixel_values)
        return torch.nn.functional.normalize(pixel_values.mean(dim=(2, 3)) + 1e-3, dim=-1)


def test_embedding_cache_streams_skips_unreadable_files_and_never_embeds_twice(tmp_path):
    from PIL import Image

    from zoo.vision.modeling_collaborator.embeddings import EmbeddingCache, list_images

    folder = tmp_path / "pool"
    folder.mkdir()
    for i, color in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255), (9, 9, 9)]):
        Image.new("RGB", (16, 16), color).save(folder / f"{i}.png")
    (folder / "9.png").write_bytes(b"\x89PNG truncated")
    rows = list_images(folder)
    embedder = CountingEmbedder()
    cache = EmbeddingCache(tmp_path / "cache", "counting:v1")
    matrix, kept, skipped = cache.embed(rows, embedder, batch_size=3, shard_size=2)
    assert [r["id"] for r in kept] == ["0", "1", "2", "3"] and embedder.seen == 4
    assert [s["id"] for s in skipped] == ["9"] and "9.png" in skipped[0]["error"]
    np.testing.assert_allclose(matrix[0], [1, 0, 0], atol=1e-2)
    (folder / "copy").mkdir()
    (folder / "copy" / "2b.png").write_bytes((folder / "2.png").read_bytes())
    again, kept, _ = EmbeddingCache(tmp_path / "cache", "counting:v1").embed(list_images(folder), embedder)
    assert embedder.seen == 4 and len(kept) == 5  # the copy has the same bytes: cached
    np.testing.assert_array_equal(again[[k["id"] for k in kept].index("copy/2b")], matrix[2])
    EmbeddingCache(tmp_path / "cache", "counting:v2").embed(rows, embedder)
    assert embedder.seen == 8  # another embedder id: computed again
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="pool is empty"):
        list_images(tmp_path / "empty")


def test_pr_curve_png_leaves_the_users_matplotlib_backend_alone(tmp_path):
    import matplotlib
    from PIL import Image

    from zoo.errors import OutputExistsError
    from zoo.vision.modeling_collaborator.evaluate import pr_curve_png

    before = matplotlib.get_backend()
    matplotlib.use("svg")  # a user's choice, which the library must not replace
    try:
        path = pr_curve_png({"head": ([0, 1, 1, 0, 1], [0.1, 0.9, 0.8, 0.3, 0.4])}, tmp_path / "pr.png")
        assert Image.open(path).size == (500, 400)
        assert matplotlib.get_backend() == "svg"
        with pytest.raises(OutputExistsError):
            pr_curve_png({"head": ([0, 1], [0.2, 0.7])}, path)
    finally:
        matplotlib.use(before)
