"""Cached greedy generation of SoM-LLaVA: zoo attention vs transformers' own SDPA path, same weights.

One model is built with ``attn_implementation="zoo"`` (every attention through ``zoo.nn.attention``),
a second with transformers' ``"sdpa"``, and the weights are copied across. Both generate greedily
with the KV cache from the same left-padded batch of prompts (image tokens + text of different
lengths); the script checks that the generated tokens are identical and prints tokens/s of both
and their ratio (goal >= 1.0), measured in this run.

    python benchmarks/som_llava_generate.py [--size small|tiny] [--batch 4] [--new-tokens 64] [--repeats 3]
    python benchmarks/som_llava_generate.py --device cuda --dtype bfloat16 --size 7b-shape
"""
from __future__ import annotations

import argparse

import torch

from _timing import device_sync, measure
from zoo.multimodal.som_llava.builder import make_config
from zoo.multimodal.som_llava.model import SomLlavaModel

SIZES = {
    "tiny": {},
    # a wider CPU model, so attention and matmuls dominate the Python overhead
    "small": {"vision_config": {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 4,
                                "num_attention_heads": 4, "image_size": 64, "patch_size": 8},
              "text_config": {"vocab_size": 2048, "hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 4,
                              "num_attention_heads": 8, "num_key_value_heads": 8}},
    # LLaVA-1.5-7B's shapes with fewer layers (for a GPU)
    "7b-shape": {"vision_config": {"num_hidden_layers": 4}, "text_config": {"num_hidden_layers": 4}},
}


def build(size: str, implementation: str) -> SomLlavaModel:
    base = "7b" if size == "7b-shape" else "tiny"
    config = make_config(base, attn_implementation=implementation, **SIZES[size])
    return SomLlavaModel(config).eval()


def prompts(model: SomLlavaModel, batch: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    image = torch.full((model.num_image_tokens,), model.image_token_id)
    rows = []
    for row in range(batch):
        text = torch.randint(5, min(model.vocab_size, 32000) - 1, (12 + 7 * row,), generator=generator)
        rows.append(torch.cat([text[:3], image, text[3:]]))
    width = max(len(r) for r in rows)
    input_ids = torch.full((batch, width), model.pad_token_id)
    mask = torch.zeros(batch, width, dtype=torch.long)
    for index, row in enumerate(rows):  # left padding, as for generation
        input_ids[index, width - len(row):] = row
        mask[index, width - len(row):] = 1
    side = model.image_size
    pixel_values = torch.randn(batch, 3, side, side, generator=generator)
    return input_ids, mask, pixel_values


def run(model, inputs, new_tokens: int, device, dtype):
    input_ids, mask, pixels = (t.to(device) for t in inputs)
    from transformers import GenerationConfig

    settings = GenerationConfig(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, num_beams=1,
                                pad_token_id=model.pad_token_id, eos_token_id=None, use_cache=True,
                                suppress_tokens=[model.image_token_id, model.pad_token_id])
    with torch.no_grad():
        out = model.llava.generate(input_ids=input_ids, attention_mask=mask, pixel_values=pixels.to(dtype),
                                   generation_config=settings)
    return out[:, input_ids.shape[1]:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="small", choices=sorted(SIZES))
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    torch.manual_seed(args.seed)
    zoo_model = build(args.size, "zoo").to(device, dtype)
    sdpa_model = build(args.size, "sdpa").to(device, dtype)
    sdpa_model.load_state_dict(zoo_model.state_dict())
    inputs = prompts(zoo_model, args.batch, args.seed)
    sync = device_sync(device)
    sdpa = measure(lambda: run(sdpa_model, inputs, args.new_tokens, device, dtype), args.repeats, sync)
    t_sdpa, tokens_sdpa = sdpa.seconds, sdpa.result
    ours = measure(lambda: run(zoo_model, inputs, args.new_tokens, device, dtype), args.repeats, sync)
    t_zoo, tokens_zoo = ours.seconds, ours.result
    same = torch.equal(tokens_zoo, tokens_sdpa)
    count = tokens_zoo.numel()
    from zoo.nn import attention_backend

    print(f"SoM-LLaVA {args.size} on {device} ({args.dtype}), batch {args.batch} left-padded prompts with "
          f"{zoo_model.num_image_tokens} image tokens, {args.new_tokens} new tokens each, greedy, KV cache")
    print(f"transformers sdpa : {count / t_sdpa:9.1f} tokens/s")
    print(f"zoo attention ({attention_backend(device, dtype)}): {count / t_zoo:9.1f} tokens/s")
    print(f"ratio zoo / sdpa: {t_sdpa / t_zoo:.2f}x (goal >= 1.0); identical tokens: {same}")
    if not same:
        raise SystemExit("generated tokens differ")


if __name__ == "__main__":
    main()
