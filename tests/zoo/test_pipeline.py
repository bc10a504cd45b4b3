"""zoo.pipeline: done steps are skipped, changed settings are an error naming them, force and
stale inputs redo a step and the later ones, interrupted steps are redone, outputs are atomic."""
import json
import logging
import os

import pytest

from zoo.errors import ConfigError, ZooError
from zoo.pipeline import Pipeline, Step, changed_keys, file_signature


class Chain:
    """Three steps: numbers -> doubled (reads numbers) -> summary folder (reads doubled)."""

    def __init__(self, folder, n=4, factor=2, opts=None, fail_in=None):
        self.folder, self.n, self.factor, self.opts, self.fail_in = folder, n, factor, opts or {"round": 1}, fail_in
        self.calls = []

    def numbers(self, ctx):
        self.calls.append("numbers")
        ctx.output("numbers.txt").write_text(" ".join(str(i) for i in range(ctx.settings["n"])))

    def doubled(self, ctx):
        self.calls.append("doubled")
        values = [int(v) * ctx.settings["factor"] for v in ctx.path("numbers.txt").read_text().split()]
        out = ctx.output("doubled.txt")
        out.write_text(" ".join(map(str, values[:2])))  # half written ...
        if self.fail_in == "doubled":
            raise KeyboardInterrupt("stopped mid-step")
        out.write_text(" ".join(map(str, values)))
        return {"count": len(values)}

    def summary(self, ctx):
        self.calls.append("summary")
        folder = ctx.output("summary")
        folder.mkdir()
        values = [int(v) for v in ctx.path("doubled.txt").read_text().split()]
        (folder / "total.txt").write_text(str(sum(values)))

    def pipeline(self):
        return Pipeline(self.folder, [
            Step("numbers", self.numbers, {"n": self.n}, outputs=["numbers.txt"]),
            Step("doubled", self.doubled, {"factor": self.factor, "opts": self.opts}, inputs=["numbers.txt"],
                 outputs=["doubled.txt"]),
            Step("summary", self.summary, {}, inputs=["doubled.txt"], outputs=["summary"]),
        ], name="toy")


def test_second_run_skips_every_done_step(tmp_path, caplog):
    chain = Chain(tmp_path / "run")
    assert chain.pipeline().run() == {"numbers": "ran", "doubled": "ran", "summary": "ran"}
    assert (tmp_path / "run" / "summary" / "total.txt").read_text() == "12"  # 2 * (0 + 1 + 2 + 3)
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "run").rglob("*") if p.is_file()}
    again = Chain(tmp_path / "run")
    caplog.set_level(logging.INFO, logger="zoo.pipeline")
    assert again.pipeline().run() == {"numbers": "skipped", "doubled": "skipped", "summary": "skipped"}
    assert again.calls == []
    assert "toy: summary already done in" in caplog.text
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    record = json.loads((tmp_path / "run" / "steps.json").read_text())
    assert record["doubled"]["settings"] == {"factor": 2, "opts": {"round": 1}}
    assert record["doubled"]["inputs"]["numbers.txt"]["size"] == len("0 1 2 3")
    assert again.pipeline().result("doubled") == {"count": 4}
    assert again.pipeline().status() == {"numbers": "done", "doubled": "done", "summary": "done"}
    assert not (tmp_path / "run" / ".staging").exists()


def test_changed_settings_are_an_error_naming_the_keys(tmp_path):
    Chain(tmp_path / "run").pipeline().run()
    before = (tmp_path / "run" / "doubled.txt").read_text()
    changed = Chain(tmp_path / "run", factor=3, opts={"round": 2})
    with pytest.raises(ConfigError) as error:
        changed.pipeline().run()
    message = str(error.value)
    assert "'doubled' outputs made with other settings" in message
    assert "changed: ['factor', 'opts.round']" in message and "factor 2 -> 3" in message
    assert "force='doubled'" in message
    assert changed.calls == [] and (tmp_path / "run" / "doubled.txt").read_text() == before
    assert changed.pipeline().status() == {"numbers": "done", "doubled": "changed", "summary": "todo"}
    custom = changed.pipeline()
    custom.hint = "Pass labels.force=true."
    with pytest.raises(ConfigError, match=r"changed: \['factor', 'opts.round'\].*Pass labels.force=true"):
        custom.run()


def test_force_redoes_that_step_and_every_later_one(tmp_path):
    Chain(tmp_path / "run").pipeline().run()
    changed = Chain(tmp_path / "run", factor=3)
    assert changed.pipeline().run(force="doubled") == {"numbers": "skipped", "doubled": "ran", "summary": "ran"}
    assert changed.calls == ["doubled", "summary"]
    assert (tmp_path / "run" / "summary" / "total.txt").read_text() == "18"
    everything = Chain(tmp_path / "run", factor=3)
    assert set(everything.pipeline().run(force=True).values()) == {"ran"}
    with pytest.raises(ConfigError, match=r"unknown step\(s\) \['nope'\]; steps are \['numbers', 'doubled'"):
        everything.pipeline().run(force="nope")


def test_an_interrupted_step_is_redone_and_never_leaves_half_an_output(tmp_path):
    chain = Chain(tmp_path / "run", fail_in="doubled")
    with pytest.raises(KeyboardInterrupt):
        chain.pipeline().run()
    assert not (tmp_path / "run" / "doubled.txt").exists()  # the half-written file stayed in staging
    assert list(json.loads((tmp_path / "run" / "steps.json").read_text())) == ["numbers"]
    resumed = Chain(tmp_path / "run")
    assert resumed.pipeline().run() == {"numbers": "skipped", "doubled": "ran", "summary": "ran"}
    assert (tmp_path / "run" / "doubled.txt").read_text() == "0 2 4 6"
    # interrupted while redoing a step that had finished before: its old record and the later ones are gone
    again = Chain(tmp_path / "run", fail_in="doubled")
    with pytest.raises(KeyboardInterrupt):
        again.pipeline().run(force="doubled")
    assert (tmp_path / "run" / "doubled.txt").read_text() == "0 2 4 6"  # the old output, whole
    assert Chain(tmp_path / "run").pipeline().status() == {"numbers": "done", "doubled": "todo", "summary": "todo"}


def test_changed_inputs_and_missing_outputs_redo_the_step(tmp_path):
    Chain(tmp_path / "run").pipeline().run()
    numbers = tmp_path / "run" / "numbers.txt"
    os.utime(numbers, ns=(1, 1))  # touched, same content: still done (the hash decides)
    chain = Chain(tmp_path / "run")
    assert chain.pipeline().run() == {"numbers": "skipped", "doubled": "skipped", "summary": "skipped"}
    numbers.write_text("5 6")  # edited by hand: doubled is stale, and so is what follows
    assert chain.pipeline().status() == {"numbers": "done", "doubled": "stale", "summary": "todo"}
    assert chain.pipeline().run() == {"numbers": "skipped", "doubled": "ran", "summary": "ran"}
    assert (tmp_path / "run" / "summary" / "total.txt").read_text() == "22"
    (tmp_path / "run" / "doubled.txt").unlink()
    chain.calls.clear()
    chain.pipeline().run()
    assert chain.calls == ["doubled", "summary"]


def test_external_inputs_and_step_mistakes(tmp_path):
    source = tmp_path / "corpus.txt"
    source.write_text("a b c")

    def count(ctx):
        ctx.output("count.txt").write_text(str(len(source.read_text().split())))

    pipeline = Pipeline(tmp_path / "run", [Step("count", count, {"v": 1}, inputs=[str(source)],
                                                outputs=["count.txt"])])
    assert pipeline.run() == {"count": "ran"}
    assert pipeline.run() == {"count": "skipped"}
    source.write_text("a b c d")
    assert pipeline.run() == {"count": "ran"} and (tmp_path / "run" / "count.txt").read_text() == "4"
    source.unlink()
    with pytest.raises(ConfigError, match="reads .*corpus.txt.*do not exist"):
        pipeline.run(force=True)
    lazy = Pipeline(tmp_path / "lazy", [Step("s", lambda ctx: None, outputs=["x.txt"])])
    with pytest.raises(ZooError, match=r"without writing \['x.txt'\]"):
        lazy.run()
    stray = Pipeline(tmp_path / "stray", [Step("s", lambda ctx: ctx.output("y.txt"), outputs=["x.txt"])])
    with pytest.raises(ZooError, match="'y.txt', which is not one of its declared outputs"):
        stray.run()
    with pytest.raises(ConfigError, match="step names repeat"):
        Pipeline(tmp_path, [Step("a", count), Step("a", count)])
    with pytest.raises(ConfigError, match="written by both 'a' and 'b'"):
        Pipeline(tmp_path, [Step("a", count, outputs=["o"]), Step("b", count, outputs=["o"])])
    (tmp_path / "run" / "steps.json").write_text("{not json")
    with pytest.raises(ConfigError, match="steps.json is not readable JSON"):
        pipeline.run()


def test_changed_keys_and_file_signature(tmp_path):
    assert changed_keys({"a": 1, "b": {"c": 2, "d": 3}}, {"a": 1, "b": {"c": 2, "d": 4}, "e": 0}) == ["b.d", "e"]
    assert changed_keys({"t": (1, 2)}, {"t": [1, 2]}) == []  # compared as JSON
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "x").write_bytes(b"abc")
    signature = file_signature(tmp_path / "f")
    assert signature["x"]["sha256"] == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    with pytest.raises(ConfigError, match="does not exist"):
        file_signature(tmp_path / "missing")


def test_a_redone_step_repeats_no_cached_tool_call(tmp_path):
    class Judge:
        tool_id = "judge:v1"
        calls = 0

        def generate(self, prompt):
            Judge.calls += 1
            return f"Score: {len(prompt) / 10}"

    prompts = ["a", "bb", "ccc"]
    seen = []

    def score(ctx):
        judge = ctx.cached(Judge())
        for prompt in prompts:
            seen.append(judge.generate(prompt))
            if len(seen) == 2 and ctx.settings["stop"]:
                raise KeyboardInterrupt  # stopped after two calls
        ctx.output("scores.json").write_text(json.dumps(seen[-3:]))

    with pytest.raises(KeyboardInterrupt):
        Pipeline(tmp_path, [Step("score", score, {"stop": True}, outputs=["scores.json"])]).run()
    assert Judge.calls == 2
    Pipeline(tmp_path, [Step("score", score, {"stop": False}, outputs=["scores.json"])]).run(force=True)
    assert Judge.calls == 3  # only the third prompt was new
    assert json.loads((tmp_path / "scores.json").read_text()) == ["Score: 0.1", "Score: 0.2", "Score: 0.3"]
