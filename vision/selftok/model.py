"""The Selftok tokenizer: image -> K discrete tokens in an autoregressive order -> image.

``SelftokModel`` holds the modules of the release's ``ImageTokenizer``
(selftok-team/SelftokTokenizer:mimogpt/models/selftok/image_tokenizer.py) under the same
names, so its checkpoints load key for key:

* ``encoder``: the Q-Former encoder with its quantizer (``zoo.vision.selftok.encoder``);
* ``model``: the decoder, an MMDiT velocity predictor (``decoder.type: diffusion``) or the
  one-step renderer (``decoder.type: renderer``) (``zoo.models.mmdit``);
* ``diffusion``: the release's 100-step schedule buffers (kept for the key set; decoding
  builds its own grid);
* ``vae``: only when the VAE is given as a config (tiny models); the SD3 VAE is loaded from
  its gated Hub repo on first use and is never saved with the model.

Token k is visible to the decoder from diffusion time ``t = to_indices^-1(k)`` up (DiTi), so
low indices carry fine detail and high indices coarse structure; AR models generate the
sequence reversed (``ar_order``). Pixels: ``encode`` takes images (paths, PIL, arrays, or
float tensors in [0, 1]); ``decode``/``render`` return float tensors [B, 3, H, W] in [0, 1].
"""
from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F

from zoo.errors import ConfigError, ZooError
from zoo.model import ZooModel, inference
from zoo.models.flow import euler_step, interpolate, shift_timesteps, velocity_target
from zoo.vision.selftok.diti import DiTi
from zoo.vision.selftok.sampling import FlowSchedule

logger = logging.getLogger("zoo.selftok")

__all__ = ["SelftokModel", "TokenIdError"]


class TokenIdError(ZooError, ValueError):
    """Token ids that are not a [B, K] batch of integers in [0, codebook size)."""


class SelftokModel(ZooModel):
    """Selftok encoder + decoder (diffusion or renderer) + VAE access. See the module docstring."""

    family = "selftok"

    def __init__(self, config: dict):
        super().__init__(config)
        from zoo.models.mmdit import MMDiT, MMDiTRenderer
        from zoo.vision.selftok.encoder import QformerEncoder

        c = self.config
        self.num_tokens = int(c["num_tokens"])
        self.image_size = int(c["image_size"])
        self.latent_channels = int(c["latent_channels"])
        downsample = int(c["vae_downsample"])
        if self.image_size % downsample:
            raise ConfigError(f"selftok image_size {self.image_size} is not a multiple of the VAE's {downsample}x")
        self.latent_size = self.image_size // downsample
        self.token_dim = int(c["token_dim"])
        self.diti = DiTi(c["stages"], c["k_per_stage"], self.num_tokens)
        enc, q, dec = c["encoder"], c["quantizer"], c["decoder"]
        self.encoder = QformerEncoder(
            num_tokens=self.num_tokens, in_channels=self.latent_channels, patch_size=int(enc["patch_size"]),
            hidden_size=int(enc["hidden_size"]), depth=int(enc["depth"]), num_heads=int(enc["num_heads"]),
            query_dim=int(enc["query_dim"]), query_heads=int(enc["query_heads"]), mlp_ratio=float(enc["mlp_ratio"]),
            pos_embed_max_size=int(enc.get("pos_embed_max_size") or 2 * self.latent_size), out_dim=self.token_dim,
            quantizer=dict(
                codebook_size=int(q["codebook_size"]), codebook_dim=int(q["code_dim"]), decay=float(q["decay"]),
                kmeans_iters=int(q["kmeans_iters"]), threshold_ema_dead_code=float(q["dead_code_threshold"]),
                reset_cluster_size=float(q["reset_cluster_size"]), commitment_weight=float(q["w_commit"]),
                diversity_weight=float(q["w_diversity"]), smart_re_K=self.num_tokens if q["smart_react"] else 0,
                reg=tuple(q["reg"]), ema_entropy_ratio=float(q["ema_entropy_ratio"]),
                entropy_groups=int(q["entropy_groups"]), continuous=bool(q["continuous"])))
        self.decoder_type = str(dec["type"])
        common = dict(num_tokens=self.num_tokens, context_dim=self.token_dim, in_channels=self.latent_channels,
                      patch_size=int(dec["patch_size"]), depth=int(dec["depth"]), hidden_size=dec.get("hidden_size"),
                      num_heads=dec.get("num_heads"), mlp_ratio=float(dec["mlp_ratio"]),
                      pos_embed_max_size=int(dec["pos_embed_max_size"]),
                      class_dropout_prob=float(dec["class_dropout_prob"]),
                      context_modulation=str(dec["context_modulation"]), adm_in_channels=self.token_dim)
        if self.decoder_type == "diffusion":
            self.model = MMDiT(**common)
        elif self.decoder_type == "renderer":
            self.model = MMDiTRenderer(input_size=self.latent_size, repeat_mask_token=bool(dec["repeat_mask_token"]),
                                       **common)
        else:
            raise ConfigError(f"selftok decoder.type must be 'diffusion' or 'renderer', got {self.decoder_type!r}")
        self.context_sees_x = bool(dec["context_see_xt"])
        self.diffusion = FlowSchedule(100)
        vae = c["vae"] or {}
        if vae.get("config"):
            from zoo.vision.selftok.vae import build_vae

            self.vae = build_vae(dict(vae["config"]))
            self.vae.requires_grad_(False)
        self.__dict__["_hub_vae"] = None  # not a submodule: never saved, loaded on first use
        self._encoder_frozen = False

    # ------------------------------------------------------------------ properties and modes
    @property
    def is_renderer(self) -> bool:
        return self.decoder_type == "renderer"

    @property
    def codebook_size(self) -> int:
        return self.encoder.quantizer.codebook_size

    def freeze_encoder(self, frozen: bool = True) -> None:
        """Keep the encoder (and its codebook statistics) fixed: no gradients, always in eval mode."""
        self._encoder_frozen = bool(frozen)
        self.encoder.requires_grad_(not frozen)
        if not frozen:  # parameters the release never uses stay frozen
            for module in (self.encoder.final_layer_norm, self.encoder.final_layer_norm2):
                module.requires_grad_(False)
            self.encoder.pos_embed.requires_grad_(False)
        if frozen:
            self.encoder.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        if self._encoder_frozen:
            self.encoder.eval()
        return self

    # ------------------------------------------------------------------ VAE
    def get_vae(self, token=None):
        """The VAE: the model's own (``vae.config``) or the Hub one (downloaded once, kept in memory)."""
        if "vae" in self._modules:
            return self.vae
        vae = self.__dict__.get("_hub_vae")
        if vae is None:
            from zoo.vision.selftok.vae import load_hub_vae

            spec = self.config.get("vae") or {}
            if not spec.get("repo_id"):
                raise ConfigError("selftok config 'vae' names neither a Hub repo (repo_id) nor a diffusers config.")
            vae = load_hub_vae(spec["repo_id"], spec.get("subfolder") or "", revision=spec.get("revision"),
                               token=token)
            vae.requires_grad_(False)
            self.__dict__["_hub_vae"] = vae
        param = next(self.parameters())
        if next(vae.parameters()).device != param.device:
            vae.to(param.device)
        return vae

    def load_vae(self, token=None):
        """Download and attach the Hub VAE now (e.g. with a token for the gated SD3 repo); returns it."""
        return self.get_vae(token=token)

    def images_to_latents(self, pixels: torch.Tensor, *, sample: bool = False) -> torch.Tensor:
        """Pixels [B, 3, H, W] in [-1, 1] -> ``process_in`` latents (posterior mode, or a sample), float32."""
        from zoo.vision.selftok.vae import process_in

        vae = self.get_vae()
        dtype = next(vae.parameters()).dtype
        posterior = vae.encode(pixels.to(device=self.device, dtype=dtype)).latent_dist
        return process_in(posterior.sample() if sample else posterior.mode()).float()

    def latents_to_images(self, latents: torch.Tensor) -> torch.Tensor:
        """``process_in`` latents -> pixels [B, 3, H, W] in [0, 1] (clamped at [-1, 1] first, as the release)."""
        from zoo.vision.selftok.vae import process_out

        vae = self.get_vae()
        dtype = next(vae.parameters()).dtype
        pixels = vae.decode(process_out(latents).to(dtype)).sample.float()
        return (pixels.clamp(-1, 1) + 1) / 2

    def image_transform(self):
        """Resize the shorter side to ``image_size`` (bilinear), centre crop, map to [-1, 1] (the release's)."""
        from zoo.image import ImageTransform

        return ImageTransform.minus_one_one(resize=self.image_size, crop=self.image_size, interpolation="bilinear")

    def prepare_images(self, images) -> torch.Tensor:
        """Images (path, PIL, array, float tensor in [0, 1], or a list / batch of them) -> [B, 3, S, S] in [-1, 1]."""
        from zoo.image import prepare_images

        return prepare_images(images, self.image_transform())

    # ------------------------------------------------------------------ token helpers
    def check_ids(self, ids) -> torch.Tensor:
        """Token ids as int64 [B, K] on the model's device; :class:`TokenIdError` when malformed or out of range."""
        if isinstance(ids, np.ndarray) or isinstance(ids, (list, tuple)):
            ids = torch.as_tensor(np.asarray(ids))
        if not isinstance(ids, torch.Tensor):
            raise TokenIdError(f"token ids must be a tensor, array or list, got {type(ids).__name__}")
        if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
            raise TokenIdError(f"token ids must be integers, got {ids.dtype}")
        if ids.dim() == 1:
            ids = ids[None]
        if ids.dim() != 2 or ids.shape[1] != self.num_tokens:
            raise TokenIdError(f"token ids must have shape [B, {self.num_tokens}] (or [{self.num_tokens}]), "
                               f"got {tuple(ids.shape)}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.codebook_size):
            raise TokenIdError(f"token ids must lie in [0, {self.codebook_size}); got values in "
                               f"[{int(ids.min())}, {int(ids.max())}]")
        return ids.to(device=self.device, dtype=torch.long)

    @inference
    def tokens(self, ids) -> torch.Tensor:
        """Decoder input for ids [B, K]: the l2-normalised codes through ``final_layer_norm3``, [B, K, token_dim]."""
        return self.encoder.tokens_from_ids(self.check_ids(ids))

    def ar_order(self, ids) -> torch.Tensor:
        """Ids in the order an AR model generates them: reversed, token K-1 (coarsest) first (release README)."""
        return self.check_ids(ids).flip(-1)

    def from_ar_order(self, sequence) -> torch.Tensor:
        """Inverse of :meth:`ar_order`: an AR sequence [B, K] back to token-index order."""
        return self.check_ids(sequence).flip(-1)

    def keep_mask(self, keep: int | None, batch: int) -> torch.Tensor | None:
        """Visibility [B, K] keeping the first ``keep`` tokens in AR order (indices K-keep .. K-1); None keeps all."""
        if keep is None:
            return None
        keep = int(keep)
        if not 1 <= keep <= self.num_tokens:
            raise ConfigError(f"keep must be between 1 and {self.num_tokens}, got {keep}")
        positions = torch.arange(self.num_tokens, device=self.device)
        return (positions >= self.num_tokens - keep)[None].expand(batch, -1)

    def visible_tokens(self, t) -> torch.Tensor:
        """DiTi: number of visible tokens at diffusion times ``t`` in [0, 1] (1 = noise), int64."""
        t = torch.as_tensor(t, dtype=torch.float32)
        return self.diti.visible_count(t * 1000.0)

    # ------------------------------------------------------------------ inference
    @inference
    def encode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """``process_in`` VAE latents [B, C, h, w] -> token ids int64 [B, K].

        As released, each call also counts the codes in ``encoder.quantizer.count`` and ``steps``,
        and an uninitialised codebook (``initted == 0``) is first fitted by k-means on this batch.
        """
        if not isinstance(latents, torch.Tensor) or latents.dim() != 4 or latents.shape[1] != self.latent_channels:
            shape = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
            raise ConfigError(f"latents must be a tensor [B, {self.latent_channels}, h, w], got {shape}")
        return self.encoder(latents.to(device=self.device))[1]

    @inference
    def encode(self, images) -> torch.Tensor:
        """Images -> token ids int64 [B, K] (resize + centre crop to ``image_size``, VAE mode, encoder)."""
        pixels = self.prepare_images(images)
        return self.encode_latents(self.images_to_latents(pixels))

    def _noise(self, batch: int, noise, generator):
        shape = (batch, self.latent_channels, self.latent_size, self.latent_size)
        if noise is None:  # drawn on the CPU, as the release does, so seeds give the same noise everywhere
            return torch.randn(shape, generator=generator).to(self.device)
        if tuple(noise.shape) != shape:
            raise ConfigError(f"noise must have shape {shape}, got {tuple(noise.shape)}")
        return noise.to(device=self.device, dtype=torch.float32)

    @inference
    def decode_latents(self, ids, steps: int = 50, cfg: float = 1.0, *, noise: torch.Tensor | None = None,
                       generator: torch.Generator | None = None, keep: int | None = None,
                       visible: torch.Tensor | None = None, cfg_context_sees_x: bool = False) -> torch.Tensor:
        """Token ids [B, K] -> ``process_in`` latents [B, C, s, s] by ``steps`` Euler steps from noise.

        The release's path (SelftokPipeline.decoding + RectifiedFlow.p_sample_loop): the tokens are
        masked once with the visibility at t = 1 (all visible); at step i the velocity is
        predicted from ``t_i`` and the tokens visible at ``long(1000 t_i)`` (float32, truncated).
        ``cfg != 1`` mixes in the unconditional velocity, ``v_u + cfg (v_c - v_u)``; as released, the
        conditional branch then has context rows that do not see the image
        (``cfg_context_sees_x=False``). ``keep`` (first tokens in AR order) or ``visible`` [B, K]
        hides tokens at every step (the release's ``super_mask``).
        """
        if self.is_renderer:
            raise ConfigError("this Selftok model has the one-step renderer; use render()/render_latents(), or load "
                              "a diffusion-decoder model (e.g. selftok-512) for decode()")
        ids = self.check_ids(ids)
        batch = ids.shape[0]
        tokens = self.encoder.tokens_from_ids(ids)
        super_mask = self.keep_mask(keep, batch) if visible is None else visible.to(self.device, torch.bool)
        schedule = FlowSchedule(int(steps)).to(self.device)
        indices = schedule.token_indices(self.diti)
        tokens = tokens * self.diti.mask(indices[0].expand(batch))[..., None].to(tokens.dtype)
        context_mods = self.model.context_modulations()
        x = self._noise(batch, noise, generator)
        shift = float(self.config.get("sampling_shift") or 1.0)
        for i in range(schedule.num_steps):
            t = schedule.scheduled_t[i].expand(batch)
            t = shift_timesteps(t, shift) if shift != 1.0 else t
            mask = self.diti.mask(indices[i].expand(batch))
            if super_mask is not None:
                mask = mask & super_mask
            if float(cfg) == 1.0:
                v = self.model(x, t, tokens, mask, context_sees_x=self.context_sees_x, context_mods=context_mods)
            else:
                v_uncond = self.model.forward_unconditional(x, t)
                v_cond = self.model(x, t, tokens, mask, context_sees_x=cfg_context_sees_x,
                                    context_mods=context_mods)
                v = v_uncond + float(cfg) * (v_cond - v_uncond)
            x = euler_step(x, v, schedule.scheduled_t[i], schedule.scheduled_t_prev[i])
        return x

    @inference
    def decode(self, ids, steps: int = 50, cfg: float = 1.0, **kwargs) -> torch.Tensor:
        """Token ids [B, K] -> images [B, 3, H, W] in [0, 1]; see :meth:`decode_latents` for the options."""
        return self.latents_to_images(self.decode_latents(ids, steps, cfg, **kwargs))

    @inference
    def render_latents(self, ids, *, keep: int | None = None, visible: torch.Tensor | None = None) -> torch.Tensor:
        """Token ids [B, K] -> clean latents in one forward of the renderer (``keep``/``visible`` hide tokens)."""
        if not self.is_renderer:
            raise ConfigError("render() needs the one-step renderer (e.g. zoo.load('selftok-512-renderer')); this "
                              "model has the diffusion decoder: use decode()")
        ids = self.check_ids(ids)
        mask = self.keep_mask(keep, ids.shape[0]) if visible is None else visible.to(self.device, torch.bool)
        return self.model(self.encoder.tokens_from_ids(ids), mask, context_sees_x=self.context_sees_x)

    @inference
    def render(self, ids, **kwargs) -> torch.Tensor:
        """Token ids [B, K] -> images [B, 3, H, W] in [0, 1] with the one-step renderer."""
        return self.latents_to_images(self.render_latents(ids, **kwargs))

    def reconstruct_latents(self, latents: torch.Tensor, **kwargs) -> torch.Tensor:
        """Encode then decode (or render) latents: the tokenizer's reconstruction in latent space."""
        ids = self.encode_latents(latents)
        return self.render_latents(ids, **kwargs) if self.is_renderer else self.decode_latents(ids, **kwargs)

    # ------------------------------------------------------------------ training
    def forward(self, latents: torch.Tensor | None = None, *, images: torch.Tensor | None = None,
                phase: str = "tokenizer", full_tokens: bool = False) -> dict:
        """Training losses (``{"loss": ..., metrics}``) for latents [B, C, h, w] (or images in [-1, 1]).

        ``phase="tokenizer"``: the diffusion decoder's rectified-flow loss plus the quantizer's
        commitment and diversity losses (image_tokenizer.py ``forward``), or, for a renderer, the
        one-step x0 regression from all tokens with the encoder frozen. ``phase="vae"``: fits a
        config-built VAE to ``images`` (reconstruction + 1e-6 KL; demo models only).
        """
        if phase == "vae":
            return self.vae_loss(images)
        if phase != "tokenizer":
            raise ConfigError(f"selftok training phase must be 'tokenizer' or 'vae', got {phase!r}")
        if latents is None:
            if images is None:
                raise ConfigError("selftok forward needs latents or images")
            with torch.no_grad():
                latents = self.images_to_latents(images, sample=True)
        latents = latents.float()
        if self.is_renderer:
            return self.renderer_loss(latents)
        return self.diffusion_loss(latents, full_tokens=full_tokens)

    def diffusion_loss(self, x0: torch.Tensor, *, full_tokens: bool = False) -> dict:
        batch = x0.shape[0]
        height, width = x0.shape[-2:]
        shift = 1.0 if height * width / 4096.0 < 0.5 else 1.878  # image_tokenizer.py: 32x32 latents -> 1
        t = torch.rand(batch, device=x0.device)
        if full_tokens:
            k = self.diti.to_indices(torch.full_like(t, 1000.0))
        else:
            k = self.diti.to_indices((float(self.config.get("t2k", 1.0)) * t).clamp(0, 1.0) * 1000.0)
        t = shift_timesteps(t, shift)
        if self.encoder.training:
            tokens, ids, quant_loss, logs = self.encoder(x0)
        else:
            with torch.no_grad():
                tokens, ids, quant_loss, logs = self.encoder(x0)
            quant_loss = tokens.new_zeros(())
        mask = self.diti.mask(k)
        context = tokens * mask[..., None].to(tokens.dtype)
        noise = torch.randn_like(x0)
        velocity = self.model(interpolate(x0, noise, t), t, context, mask, context_sees_x=self.context_sees_x)
        mse = F.mse_loss(velocity.float(), velocity_target(x0, noise))
        out = {"loss": mse + quant_loss, "mse": mse.detach(), "quant_loss": quant_loss.detach(),
               "visible_tokens": (k + 1).float().mean()}
        out.update({key: value for key, value in logs.items() if isinstance(value, (int, float))})
        return out

    def renderer_loss(self, x0: torch.Tensor) -> dict:
        with torch.no_grad():
            was = self.encoder.training
            self.encoder.eval()
            tokens = self.encoder(x0)[0]
            self.encoder.train(was and not self._encoder_frozen)
        pred = self.model(tokens, context_sees_x=self.context_sees_x)
        mse = F.mse_loss(pred.float(), x0)
        return {"loss": mse, "mse": mse.detach()}

    def vae_loss(self, images: torch.Tensor, kl_weight: float = 1e-6) -> dict:
        if "vae" not in self._modules:
            raise ConfigError("only a config-built VAE (vae.config) can be trained; the SD3 VAE stays frozen")
        posterior = self.vae.encode(images).latent_dist
        recon = self.vae.decode(posterior.sample()).sample
        mse = F.mse_loss(recon.float(), images.float())
        kl = posterior.kl().mean()
        return {"loss": mse + kl_weight * kl, "vae_mse": mse.detach(), "vae_kl": kl.detach()}
