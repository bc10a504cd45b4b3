"""zoo.models.hubert vs transformers.HubertModel on a variable-length batch (CPU, 2 threads).

Both models are HuBERT-base truncated to 9 layers (Sylber's backbone, Berkeley-Speech-Group/sylber:sylber/model/sylber.py) with
the same random weights. The batch is 4 utterances of 2-8 s at 16 kHz. transformers gets the
zero-padded batch with an attention_mask; zoo gets the same padded batch with sample lengths
and runs it padding-free. Timed: forward + backward of the sum of squares of the valid frames
(eval mode, so no dropout randomness), and forward alone under no_grad.

Printed: time ratio transformers / zoo (goal >= 1.0), and zoo's achieved FLOP/s (matmul and
conv FLOPs counted analytically over the valid frames) against this machine's float32
``torch.mm`` FLOP/s measured in the same run (goal >= 40 %).

    python benchmarks/hubert_backbone.py [--repeats 3] [--threads 2]
"""
from __future__ import annotations

import argparse

import torch

from _timing import matmul_flops, timed_pair


def count_flops(config, sample_lengths: list[int], frame_lengths: list[int]) -> tuple[float, float]:
    """(forward, backward) multiply-add FLOPs (x2) of the matmuls and convs over the valid frames."""
    forward = backward = 0.0
    for n, frames in zip(sample_lengths, frame_lengths):
        length, in_dim = n, 1
        for index, (dim, kernel, stride) in enumerate(zip(config.conv_dim, config.conv_kernel, config.conv_stride)):
            length = (length - kernel) // stride + 1
            flops = 2.0 * in_dim * dim * kernel * length
            forward += flops
            backward += flops if index == 0 else 2 * flops  # the waveform needs no gradient
            in_dim = dim
        d, inner, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
        per_frame = 2.0 * in_dim * d  # feature projection
        per_frame += 2.0 * d * (d // config.num_conv_pos_embedding_groups) * config.num_conv_pos_embeddings
        per_frame += layers * (2.0 * d * 3 * d + 2.0 * d * d + 2 * 2.0 * d * inner)
        attention = layers * 2 * 2.0 * frames * frames * d  # QK^T and PV
        forward += per_frame * frames + attention
        backward += 2 * (per_frame * frames + attention)
    return forward, backward


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, nargs="+", default=[2.3, 4.1, 5.6, 8.0])
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    import transformers

    from zoo.models.hubert import HubertConfig, HubertModel
    from zoo.nn import attention_backend

    torch.manual_seed(0)
    config = HubertConfig(num_hidden_layers=9)
    ours = HubertModel(config).eval()
    reference = transformers.HubertModel(transformers.HubertConfig(**config.to_dict())).eval()
    reference.load_state_dict(ours.state_dict(), strict=True)

    sample_lengths = [int(s * 16000) for s in args.seconds]
    width = max(sample_lengths)
    wav = torch.zeros(len(sample_lengths), width)
    for i, n in enumerate(sample_lengths):
        wav[i, :n] = torch.randn(n)
    lengths = torch.tensor(sample_lengths)
    attention_mask = (torch.arange(width)[None] < lengths[:, None]).long()
    frames = [int(ours.frame_lengths(n)) for n in sample_lengths]
    valid = torch.arange(int(ours.frame_lengths(width)))[None] < torch.tensor(frames)[:, None]

    def ours_step():
        ours.zero_grad(set_to_none=True)
        out = ours(wav, lengths).last_hidden_state
        out[valid].pow(2).sum().backward()

    def reference_step():
        reference.zero_grad(set_to_none=True)
        out = reference(wav, attention_mask=attention_mask).last_hidden_state
        out[valid].pow(2).sum().backward()

    def ours_forward():
        with torch.no_grad():
            ours(wav, lengths)

    def reference_forward():
        with torch.no_grad():
            reference(wav, attention_mask=attention_mask)

    peak = matmul_flops()
    t_ours, t_reference = timed_pair(ours_step, reference_step, args.repeats)
    f_ours, f_reference = timed_pair(ours_forward, reference_forward, args.repeats)
    peak = max(peak, matmul_flops())  # best of before and after: the machine may be shared
    forward_flops, backward_flops = count_flops(config, sample_lengths, frames)
    padded_frames = len(sample_lengths) * int(ours.frame_lengths(width))

    print(f"HuBERT-base, 9 layers; batch of {len(sample_lengths)} utterances {args.seconds} s "
          f"({sum(frames)} valid frames, {padded_frames} padded); {args.threads} threads; "
          f"attention backend {attention_backend(torch.device('cpu'))}; torch {torch.__version__}, "
          f"transformers {transformers.__version__} (attn {reference.config._attn_implementation})")
    print(f"float32 torch.mm peak:            {peak / 1e9:8.1f} GFLOP/s")
    print(f"forward+backward  transformers:   {t_reference:8.3f} s")
    print(f"forward+backward  zoo:            {t_ours:8.3f} s   ratio transformers/zoo = {t_reference / t_ours:.2f}"
          f"  (goal >= 1.0)")
    achieved = (forward_flops + backward_flops) / t_ours
    print(f"zoo achieved (fwd+bwd):           {achieved / 1e9:8.1f} GFLOP/s = {100 * achieved / peak:.0f}% of mm peak"
          f"  (goal >= 40%; {(forward_flops + backward_flops) / 1e9:.0f} GFLOP counted)")
    print(f"forward only      transformers:   {f_reference:8.3f} s")
    print(f"forward only      zoo:            {f_ours:8.3f} s   ratio transformers/zoo = {f_reference / f_ours:.2f}")
    print(f"zoo achieved (forward):           {forward_flops / f_ours / 1e9:8.1f} GFLOP/s = "
          f"{100 * forward_flops / f_ours / peak:.0f}% of mm peak")


if __name__ == "__main__":
    main()
