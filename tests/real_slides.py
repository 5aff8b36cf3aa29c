"""Real slides for the tests: the fetching lives in `persam_lib.slides.samples`; this module only
names what the tests use (conftest's `real_slide` fixture skips, saying why, when the registry
cannot be reached)."""
from persam_lib.slides.samples import SHA256, RegistryUnreachable, SampleError, cache_dir, cmu_small_region

__all__ = ["SHA256", "RegistryUnreachable", "SampleError", "cache_dir", "cmu_small_region"]
