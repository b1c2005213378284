"""zsnr: Stable Diffusion fine-tuning with the fixes of Lin et al., "Common Diffusion Noise Schedules and Sample Steps are Flawed"."""

__version__ = "0.1.0"
