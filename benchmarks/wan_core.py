"""Generation core vs diffusers, side by side in one run: DiT forward time, VAE decode time
and peak memory, and VAE decode memory at 33 vs 65 frames.

    python benchmarks/wan_core.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import bench_wan_dit  # noqa: E402
import bench_wan_vae  # noqa: E402


def main() -> None:
    bench_wan_dit.run()
    print()
    bench_wan_vae.run()


if __name__ == "__main__":
    main()
