"""Concept-row training: zoo's spliced rows vs the official reset-after-step (step time, peak memory).

The official UniCTokens scripts (arctanxarc/UniCTokens:train_w_3_stages/train_p_stage_1.py) make the whole
input embedding and output head trainable, step AdamW over every row and copy the frozen rows back
afterwards. zoo trains only the new rows as separate parameters spliced into frozen tables
(zoo.multimodal.unictokens.concept_tokens). Both run the same model, data and AdamW settings.

Model: a Phi with Show-o's vocabulary after a stage-3 insertion (58498 + 33 rows) and a narrower LLM
(default hidden 512, 2 layers) so the CPU finishes; sequences of Show-o's text-to-image length
(128 + 1 + ``--tokens`` + 2) and full-vocabulary logits, as in training. Each method runs in its own
process. Printed per method: median step time (forward + backward + AdamW + reset), peak RSS growth over
the built model (``ru_maxrss``), and the bytes of gradients + optimiser state (exact); then the ratios
official / zoo (goal: memory < 1, speed >= 1.0x). On CUDA, peak allocated memory replaces RSS.

    python benchmarks/unictokens_rows.py [--hidden 512] [--layers 2] [--tokens 256] [--steps 6] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

VOCAB = 58498 + 33
TEXT = 50305


def build(args):
    from zoo.models.showo import build_phi
    from zoo.multimodal.unictokens.concept_tokens import VocabLayout, insert_rows

    torch.manual_seed(0)
    llm = {"hidden_size": args.hidden, "num_hidden_layers": args.layers, "num_attention_heads": max(1, args.hidden // 64),
           "intermediate_size": 4 * args.hidden, "max_position_embeddings": 2048}
    lm = build_phi(llm, VOCAB - 33)
    for p in lm.parameters():
        p.requires_grad_(False)
    insert_rows(lm, VocabLayout(TEXT, 8193), 33)
    return lm


def worker(args) -> dict:
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    from zoo.multimodal.unictokens.concept_tokens import ResetAfterStep, set_trainable_rows

    lm = build(args).to(device)
    trainable = [TEXT] + list(range(TEXT + 25, TEXT + 33))  # stage 3: <name> + 8 rows
    if args.method == "official":
        embed = torch.nn.Embedding.from_pretrained(lm.get_input_embeddings().weight.detach().clone(), freeze=False)
        head = torch.nn.Linear(args.hidden, VOCAB, device=device)
        head.weight.data.copy_(lm.get_output_embeddings().weight)
        head.bias.data.copy_(lm.get_output_embeddings().bias)
        lm.set_input_embeddings(embed)
        lm.set_output_embeddings(head)
        reset = ResetAfterStep(lm, trainable)
        params, after = reset.parameters(), reset.restore
    else:
        set_trainable_rows(lm, trainable)
        params, after = [p for p in lm.parameters() if p.requires_grad], (lambda: None)
    optimizer = torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-3)
    g = torch.Generator().manual_seed(1)
    length = 128 + 1 + args.tokens + 2
    batches = [(torch.randint(0, VOCAB, (1, length), generator=g).to(device),
                torch.randint(0, VOCAB, (1, length), generator=g).to(device)) for _ in range(args.steps + 1)]
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for index, (ids, target) in enumerate(batches):
        start = time.perf_counter()
        logits = lm(input_ids=ids, use_cache=False).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB).float(), target.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        after()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if index:  # the first step allocates the optimiser state
            times.append(time.perf_counter() - start)
    state_bytes = sum(v.numel() * v.element_size() for s in optimizer.state.values() for v in s.values()
                      if torch.is_tensor(v))
    grad_bytes = sum(p.grad.numel() * p.grad.element_size() for p in params if p.grad is not None)
    out = {"step_s": statistics.median(times), "grad_state_bytes": state_bytes + grad_bytes,
           "peak_rss_growth_bytes": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) * 1024}
    if device.type == "cuda":
        out["peak_cuda_bytes"] = torch.cuda.max_memory_allocated() - base
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=256, help="image tokens per sequence (Show-o-512: 1024)")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="processes per method, alternating")
    parser.add_argument("--method", choices=["official", "zoo"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.method:
        print(json.dumps(worker(args)))
        return
    results = {"official": [], "zoo": []}
    for _ in range(args.repeats):
        for method in ("official", "zoo"):
            command = [sys.executable, __file__, "--method", method] + [f"--{k}={getattr(args, k)}" for k in
                                                                       ("hidden", "layers", "tokens", "steps", "threads")]
            line = subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
            results[method].append(json.loads(line))

    def median(method, key):
        values = [r[key] for r in results[method] if key in r]
        return statistics.median(values) if values else None

    print(f"vocabulary {VOCAB} rows, hidden {args.hidden}, {args.layers} layers, sequence {128 + 3 + args.tokens}, "
          f"{args.threads} threads, {args.repeats} processes x {args.steps} steps per method "
          f"({'cuda' if torch.cuda.is_available() else 'cpu'})")
    keys = ["step_s", "peak_rss_growth_bytes", "grad_state_bytes"] + (["peak_cuda_bytes"] if torch.cuda.is_available() else [])
    for key in keys:
        official, zoo = median("official", key), median("zoo", key)
        unit = "s" if key == "step_s" else "MB"
        scale = 1 if key == "step_s" else 1 / 2 ** 20
        print(f"  {key:24s} official {official * scale:10.3f} {unit}   zoo {zoo * scale:10.3f} {unit}   "
              f"official/zoo {official / max(zoo, 1e-12):8.2f}x")
    print(f"speed: zoo is {median('official', 'step_s') / median('zoo', 'step_s'):.2f}x the official step rate "
          f"(goal >= 1.0); memory: zoo needs {median('zoo', 'peak_rss_growth_bytes') / max(median('official', 'peak_rss_growth_bytes'), 1):.2f}x "
          "the official peak growth (goal < 1)")


if __name__ == "__main__":
    main()
