"""SoM-LLaVA (Yan et al., "List Items One by One", COLM 2024, arXiv 2404.16375).

LLaVA-1.5 (CLIP ViT-L/14-336 + ``mlp2x_gelu`` projector + Vicuna-v1.5) fine-tuned with extra data:
images carrying Set-of-Mark tags and the instruction to list the tagged items one by one.
``zoo.load("som-llava-13b-hf")`` gives the released model; ``zoo train som-llava`` runs the
visual-instruction-tuning stage. Public pieces: ``tag_image`` (tags.py, also ``zoo som-tag``),
the listing/QA data builders (data.py), SomLlavaModel (model.py: ``generate``, ``list_items``),
the key converters (loader.py), ``evaluate`` (evaluate.py).
"""
from zoo.multimodal.som_llava.builder import DEFAULT_CONFIG, SIZES, build, make_config
from zoo.registry import Family, register_family

FAMILY = register_family(Family(
    name="som-llava",
    modality="multimodal",
    build=build,
    sizes=SIZES,
    defaults=DEFAULT_CONFIG,
    trainer="zoo.multimodal.som_llava.trainer:SomLlavaTrainer",
    load="zoo.multimodal.som_llava.loader:load",
    evaluate="zoo.multimodal.som_llava.evaluate:evaluate",
    commands={"som-tag": "zoo.multimodal.som_llava.cli:som_tag_main"},
    description="SoM-LLaVA: LLaVA-1.5 visual instruction tuning with Set-of-Mark tagged images and "
                "'list items one by one' data (arXiv 2404.16375).",
))

__all__ = ["FAMILY", "DEFAULT_CONFIG", "SIZES", "build", "make_config"]
