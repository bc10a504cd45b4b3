"""CLIP models built with open_clip's own model code (``open_clip.model.CLIP``) as zoo models.

``zoo.load("shapes-clip-tiny", pretrained=False)`` builds the tiny config; ``zoo train clip
--config vision/clip/recipes/shapes.yaml`` trains it on shapes-world images and captions with
open_clip's ``ClipLoss`` through the zoo engine; ``zoo convert clip CKPT OUT --size vit-b-32``
reads an open_clip checkpoint. The model is the image-text embedder other families take
(``encode_image``, ``encode_text``, ``image_transform``), e.g. the Modeling Collaborator's
frozen features. Public pieces: ClipModel (model.py), ClipTrainer (trainer.py), load
(loader.py), evaluate (evaluate.py).
"""
from zoo.registry import Family, register_family
from zoo.vision.clip.builder import DEFAULT_CONFIG, SIZES, build, make_config

FAMILY = register_family(Family(
    name="clip",
    modality="vision",
    build=build,
    sizes=SIZES,
    defaults=DEFAULT_CONFIG,
    trainer="zoo.vision.clip.trainer:ClipTrainer",
    load="zoo.vision.clip.loader:load",
    evaluate="zoo.vision.clip.evaluate:evaluate",
    description="CLIP (Radford et al., arXiv 2103.00020) on open_clip's model code: contrastive image-text "
                "embeddings; trains with open_clip's ClipLoss, reads open_clip checkpoints.",
))

__all__ = ["FAMILY", "DEFAULT_CONFIG", "SIZES", "build", "make_config"]
