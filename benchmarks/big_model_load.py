"""Loading big checkpoints: peak memory and time of ``zoo.load`` against transformers' ``from_pretrained``.

1. Builds a synthetic ~2 GB float32 checkpoint: transformers' ``LlamaForCausalLM`` scaled up
   (hidden 2048, intermediate 5504, vocabulary 32000, as many layers as fit the size), random
   weights, written twice with the same tensors and shard size: as a zoo folder
   (``ToyCausalLM.save_pretrained``, keys under ``lm.``) and as a transformers folder
   (``LlamaForCausalLM.save_pretrained``).
2. Measures, each in a fresh subprocess with the files already in the page cache (imports done
   before the clock starts):

   * ``zoo.load(zoo folder)``                          zoo's path for a zoo-format repo;
   * ``zoo.weights.load_pretrained(transformers folder, key_map)``  a family loader streaming an
     official transformers-layout checkpoint;
   * ``LlamaForCausalLM.from_pretrained(transformers folder)``      the reference;
   * ``naive``: build with random init, ``safetensors.load_file`` every shard, ``load_state_dict``
     (what zoo did before), unless ``--skip-naive``;
   * ``zoo.load(..., dtype=torch.bfloat16)`` against ``from_pretrained(dtype=torch.bfloat16)`` on the CPU:
     a converting load (the result is half the checkpoint's size);
   * with a CUDA GPU, also ``zoo.load(..., dtype=torch.bfloat16, device="cuda")`` against
     ``from_pretrained(dtype=torch.bfloat16, device_map="cuda")``: time to weights on the GPU and
     the host's peak RSS growth (the checkpoint is float32: bf16 on the GPU is half its size).

   Peak RSS is the growth of the process's high-water mark (``VmHWM``, reset through
   ``/proc/self/clear_refs`` just before the call) over its RSS before the call, as a ratio of
   the weights' size (goal for zoo <= 1.3x). Time is the wall time of the call (goal <= 1.2x
   transformers). transformers leaves float32 safetensors weights memory-mapped (read on first
   use) while zoo copies them into fresh allocations, so each is measured twice: the load call
   alone, and the load plus a first touch of every weight (one float per 4 KiB page of every
   parameter is summed, which faults in whatever is still mapped). Each is run ``--repeats`` times, alternating; printed:
   medians of times and maxima of peaks, and whether every path gives the same logits.
3. HuBERT-base (94 M parameters, 377 MB): warm ``zoo.load`` of a zoo folder against
   ``transformers.HubertModel.from_pretrained`` of the same weights, alternating, medians.

    python benchmarks/big_model_load.py [--size-gb 2] [--shard-size 500MB] [--repeats 3] [--threads 2]

Linux only (reads ``/proc/self/status``). Needs about 3x the checkpoint size of free memory while
it builds the checkpoint, and 2x on disk (``--workdir``, default a temporary folder).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _timing import timed_pair

HIDDEN, INTERMEDIATE, VOCAB, HEADS = 2048, 5504, 32000, 16


def lm_config(size_gb: float) -> dict:
    per_layer = 4 * HIDDEN * HIDDEN + 3 * HIDDEN * INTERMEDIATE + 2 * HIDDEN
    outside = 2 * VOCAB * HIDDEN + HIDDEN
    layers = max(1, round((size_gb * 1e9 / 4 - outside) / per_layer))
    return {"vocab_size": VOCAB, "hidden_size": HIDDEN, "intermediate_size": INTERMEDIATE,
            "num_hidden_layers": layers, "num_attention_heads": HEADS, "num_key_value_heads": HEADS,
            "max_position_embeddings": 4096, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
            "tie_word_embeddings": False}


def rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


# ----------------------------------------------------------------------------- building the checkpoint

def build_checkpoint(workdir: Path, size_gb: float, shard_size: str) -> tuple[Path, Path, int]:
    import torch

    from zoo import weights
    from zoo.train.toy_lm import ToyCausalLM

    config = lm_config(size_gb)
    zoo_dir, hf_dir = workdir / "zoo", workdir / "transformers"
    with weights.init_empty():
        model = ToyCausalLM(config)
    generator = torch.Generator().manual_seed(0)
    for name, param in list(model.named_parameters()):
        owner, _, attr = name.rpartition(".")
        module = model.get_submodule(owner)
        value = torch.randn(param.shape, generator=generator) * 0.02 if param.dim() > 1 else torch.ones(param.shape)
        module._parameters[attr] = torch.nn.Parameter(value, requires_grad=False)
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    model.save_pretrained(zoo_dir, max_shard_size=shard_size, overwrite=True)
    model.lm.save_pretrained(hf_dir, max_shard_size=shard_size)
    return zoo_dir, hf_dir, nbytes


def warm_page_cache(*folders: Path) -> None:
    for folder in folders:
        for file in sorted(folder.iterdir()):
            with open(file, "rb") as handle:
                while handle.read(1 << 24):
                    pass


# ----------------------------------------------------------------------------- one measurement (child)

def child(method: str, zoo_dir: str, hf_dir: str) -> dict:
    import torch
    from transformers import LlamaForCausalLM

    import zoo
    from zoo import weights
    from zoo.train.toy_lm import ToyCausalLM, from_transformers_key

    config = json.loads((Path(zoo_dir) / "config.json").read_text())["config"]
    zoo.registry.list_families()  # import the family packages before the clock starts (as transformers' imports)
    if method == "zoo.load":
        def load():
            return zoo.load(zoo_dir)
    elif method == "zoo.weights.load_pretrained":
        def load():
            return weights.load_pretrained(ToyCausalLM, config, hf_dir, key_map=from_transformers_key)
    elif method == "transformers.from_pretrained":
        def load():
            return LlamaForCausalLM.from_pretrained(hf_dir)
    elif method == "zoo.load bf16":
        def load():
            return zoo.load(zoo_dir, dtype=torch.bfloat16)
    elif method == "transformers bf16":
        def load():
            return LlamaForCausalLM.from_pretrained(hf_dir, dtype=torch.bfloat16)
    elif method == "zoo.load bf16 cuda":
        def load():
            model = zoo.load(zoo_dir, dtype=torch.bfloat16, device="cuda")
            torch.cuda.synchronize()
            return model
    elif method == "transformers bf16 cuda":
        def load():
            model = LlamaForCausalLM.from_pretrained(hf_dir, dtype=torch.bfloat16, device_map="cuda")
            torch.cuda.synchronize()
            return model
    elif method == "naive":
        def load():
            from safetensors.torch import load_file

            model = ToyCausalLM(config)
            state = {}
            for file in sorted(Path(zoo_dir).glob("model-*.safetensors")):
                state.update(load_file(str(file)))
            model.load_state_dict(state)
            return model
    else:
        raise SystemExit(f"unknown method {method}")
    torch.manual_seed(0)
    if "cuda" in method:
        torch.cuda.init()
        torch.empty(1, device="cuda")  # the CUDA context is not part of loading
    ids = torch.arange(8)[None]
    before = rss_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    start = time.perf_counter()
    model = load()
    seconds = time.perf_counter() - start
    peak = rss_kb("VmHWM")
    with torch.no_grad():  # one float per page: every page of every weight is read once
        touched = sum(float(p.detach().reshape(-1)[::1024].float().sum()) for p in model.parameters())
    with_touch = time.perf_counter() - start
    peak_touch = rss_kb("VmHWM")
    with torch.no_grad():
        logits = model(input_ids=ids.to(next(model.parameters()).device)).logits.float().cpu()
    first = next(iter(model.parameters()))
    return {"method": method, "seconds": seconds, "growth_bytes": (peak - before) * 1024,
            "seconds_touch": with_touch, "growth_touch_bytes": (peak_touch - before) * 1024, "touched": touched,
            "logit": float(logits[0, -1, 0]), "dtype": str(first.dtype), "device": str(first.device)}


def run_child(method: str, zoo_dir: Path, hf_dir: Path, threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    done = subprocess.run([sys.executable, __file__, "--child", method, str(zoo_dir), str(hf_dir)],
                          capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{method} failed:\n{done.stdout}\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- HuBERT-base, warm

def hubert_warm(workdir: Path, repeats: int) -> tuple[float, float]:
    import torch
    import transformers

    import zoo
    from zoo.models.hubert import HUBERT_BASE_ENCODER

    zoo_dir, hf_dir = workdir / "hubert-zoo", workdir / "hubert-transformers"
    torch.manual_seed(0)
    model = zoo.load("hubert-base", pretrained=False)
    model.save_pretrained(zoo_dir, overwrite=True)
    reference = transformers.HubertModel(transformers.HubertConfig(**HUBERT_BASE_ENCODER))
    state = {k.removeprefix("hubert."): v for k, v in model.state_dict().items()}
    reference.load_state_dict(state, strict=True)  # the same weights, transformers' names
    reference.save_pretrained(hf_dir)
    del model, reference
    transformers.logging.set_verbosity_error()

    def ours():
        zoo.load(str(zoo_dir))

    def theirs():
        transformers.HubertModel.from_pretrained(hf_dir)

    return timed_pair(ours, theirs, repeats)  # its warm-up call fills imports and the page cache


# ----------------------------------------------------------------------------- main

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-gb", type=float, default=2.0)
    parser.add_argument("--shard-size", default="500MB")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument("--child", nargs=3, metavar=("METHOD", "ZOO_DIR", "HF_DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return

    import torch

    torch.set_num_threads(args.threads)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="zoo-big-load-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        start = time.perf_counter()
        zoo_dir, hf_dir, nbytes = build_checkpoint(workdir, args.size_gb, args.shard_size)
        shards = sorted(p.name for p in zoo_dir.glob("model-*.safetensors"))
        print(f"checkpoint: {lm_config(args.size_gb)['num_hidden_layers']}-layer Llama, {nbytes / 1e9:.2f} GB float32 "
              f"in {len(shards)} shards of <= {args.shard_size} (built in {time.perf_counter() - start:.0f} s)")
        warm_page_cache(zoo_dir, hf_dir)
        methods = ["zoo.load", "zoo.weights.load_pretrained", "transformers.from_pretrained", "zoo.load bf16",
                   "transformers bf16"]
        if not args.skip_naive:
            methods.append("naive")
        if torch.cuda.is_available():
            methods += ["zoo.load bf16 cuda", "transformers bf16 cuda"]
        results: dict[str, list[dict]] = {m: [] for m in methods}
        for _ in range(args.repeats):
            for method in methods:
                results[method].append(run_child(method, zoo_dir, hf_dir, args.threads))
        logits = {round(r["logit"], 4) for m, rs in results.items() for r in rs if "bf16" not in m}
        print(f"same float32 output from every float32 path: {len(logits) == 1} ({sorted(logits)})")
        for device in ("", " cuda"):
            low = {r["logit"] for m, rs in results.items() for r in rs if m.endswith("bf16" + device)}
            if low:
                print(f"bf16{device or ' cpu'} paths agree: {len(low) == 1} ({sorted(low)})")
        ref = "transformers.from_pretrained"
        summary = {}
        for suffix, label in (("", "load call"), ("_touch", "load + first read of every weight")):
            ref_time = statistics.median(r["seconds" + suffix] for r in results[ref])
            ref_peak = max(r["growth" + suffix + "_bytes"] for r in results[ref]) / nbytes
            print(f"\n{label}\n{'method':32s} {'time s (median)':>16s} {'/ transformers':>15s} "
                  f"{'peak RSS growth / weights':>27s}")
            for method in methods:
                if "cuda" in method or ("bf16" in method and suffix):
                    continue
                seconds = statistics.median(r["seconds" + suffix] for r in results[method])
                peak = max(r["growth" + suffix + "_bytes"] for r in results[method]) / nbytes
                print(f"{method:32s} {seconds:16.2f} {seconds / ref_time:14.2f}x {peak:26.2f}x")
                summary[(method, suffix)] = (seconds / ref_time, peak, ref_peak)
        if torch.cuda.is_available():
            ours, theirs = (results[m] for m in ("zoo.load bf16 cuda", "transformers bf16 cuda"))
            t_ours, t_theirs = (statistics.median(r["seconds"] for r in rs) for rs in (ours, theirs))
            p_ours, p_theirs = (max(r["growth_bytes"] for r in rs) / nbytes for rs in (ours, theirs))
            print(f"\nbf16 onto CUDA: zoo.load {t_ours:.2f} s, transformers {t_theirs:.2f} s ({t_ours / t_theirs:.2f}x); "
                  f"host peak RSS growth {p_ours:.2f}x vs {p_theirs:.2f}x the float32 weights")
        for suffix, label in (("", "load call"), ("_touch", "load + first read of every weight")):
            ratio, peak, ref_peak = summary[("zoo.load", suffix)]
            print(f"\nzoo.load, {label}: peak RSS growth {peak:.2f}x the weights (goal <= 1.3x; transformers "
                  f"{ref_peak:.2f}x); time {ratio:.2f}x transformers' from_pretrained (goal <= 1.2x)")
        shutil.rmtree(zoo_dir), shutil.rmtree(hf_dir)

        ours, theirs = hubert_warm(workdir, max(args.repeats, 5))
        print(f"\nHuBERT-base warm load: zoo.load {ours * 1000:.0f} ms, transformers HubertModel.from_pretrained "
              f"{theirs * 1000:.0f} ms: {ours / theirs:.2f}x")
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
