"""Feature extraction rates on one demo slide, one core: reading, encoding and both together.

Reference rates are measured in the same run, so the ratios hold on a noisy shared machine:
- OpenSlide patch reads vs decoding the same slide's stored JPEG tiles (imagecodecs, the ceiling);
- end-to-end extraction vs min(read-only, encode-only).
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from benchmarks.common import Row, best_of, print_table


def run() -> list[Row]:
    import tifffile
    import torch

    from persam_lib.cohort.demo_tissue import SlideDesign, render_slide
    from persam_lib.features.encoders import create_encoder
    from persam_lib.features.extract import ExtractConfig, extract_slide
    from persam_lib.slides.reader import open_slide
    from persam_lib.slides.tiff_writer import write_pyramidal_tiff

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.tiff"
        rgb, _ = render_slide(SlideDesign(4096, 3072, "A", "B", 560), np.random.default_rng(0))
        write_pyramidal_tiff(path, rgb, mpp=0.5)
        encoder = create_encoder("stats")
        with open_slide(path) as slide:
            data, _, _ = extract_slide(slide, "bench", encoder)
            coords = data.coords
            n = len(coords)

            def read_all():
                for x, y in coords:
                    slide.read_region((int(x), int(y)), 0, (256, 256))

            read_s = best_of(read_all)
            patches = np.stack([slide.read_region((int(x), int(y)), 0, (256, 256)) for x, y in coords])
        encode_s = best_of(lambda: [encoder(patches[i : i + 64]) for i in range(0, n, 64)])

        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            tiles = []
            fh = tif.filehandle
            for offset, count in zip(page.dataoffsets, page.databytecounts):
                fh.seek(offset)
                tiles.append(fh.read(count))
            tables = page.jpegtables
            decode = page.decode  # tifffile's tile decoder (libjpeg-turbo through imagecodecs)
            decode_s = best_of(lambda: [decode(t, i, jpegtables=tables) for i, t in enumerate(tiles)])
        tile_px = 256 * 256
        with open_slide(path) as slide:
            e2e_s = best_of(lambda: extract_slide(slide, "bench", encoder), repeats=2)
    px = n * 256 * 256
    return [
        Row("OpenSlide read_region, 256 px patches (Mpx/s) vs JPEG tile decode", px / read_s / 1e6, len(tiles) * tile_px / decode_s / 1e6, "M", "issue 4: fast path >= 0.8"),
        Row("end-to-end extraction (patches/s) vs min(read-only, encode-only)", n / e2e_s, min(n / read_s, n / encode_s), "/", "issue 4: >= 0.8"),
        Row("stats encoder alone (patches/s) vs OpenSlide read alone", n / encode_s, n / read_s, "/", "(information)"),
    ]


if __name__ == "__main__":
    print_table("feature extraction, one core", run())
