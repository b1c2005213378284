"""Build or load the UNet, autoencoder, text encoder and tokenizer of a Stable Diffusion model."""

from zsnr.models.autoencoders import IdentityAutoencoder, KLAutoencoder, tiny_kl_autoencoder
from zsnr.models.components import (
    Components,
    build_components,
    check_model_files,
    encoder_signature,
    size_multiple,
)
from zsnr.models.sd21 import SD21_UNET, SD21_V_UNET
from zsnr.models.text import HFCLIPTextEncoder, OpenCLIPTextEncoder, Tokenizer
from zsnr.models.unet import build_unet, configure_unet, tiny_unet_config

__all__ = [
    "SD21_UNET",
    "SD21_V_UNET",
    "Components",
    "HFCLIPTextEncoder",
    "IdentityAutoencoder",
    "KLAutoencoder",
    "OpenCLIPTextEncoder",
    "Tokenizer",
    "build_components",
    "build_unet",
    "check_model_files",
    "configure_unet",
    "encoder_signature",
    "size_multiple",
    "tiny_kl_autoencoder",
    "tiny_unet_config",
]
