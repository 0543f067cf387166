#!/usr/bin/env bash
# Prepare what scripts/reproduce_gpu.sh needs on a GPU machine that has PyTorch but no Hydra and
# no network: the missing Python packages as wheels in .whl/ and the datasets in .data/ (both
# git-ignored; carry them with the working tree, e.g. the device tool's carry [".whl", ".data"]).
#
#   scripts/prepare_gpu_carry.sh [SHARED_DATA]      (default: ../shared/data)
#
# .whl/: hydra-core 1.3, omegaconf 2.3, antlr4-python3-runtime 4.9.3 (only an sdist on PyPI: built
#        into a pure-Python wheel here) and filelock, all pure Python (py3-none-any), one version
#        each (two versions of one package stop the install there).
# .data/: MNIST/raw/*.gz as they are (11.6 MB), Omniglot as torchvision's two zips of the
#         extracted folders (32,460 small PNGs are 135 MB on disk but about 9 MB zipped; the
#         loader reads the zips directly: bilevel_bench/data/omniglot.py).
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${1:-../shared/data}
PYTHON=${PYTHON:-python}

rm -rf .whl && mkdir -p .whl
"$PYTHON" -m pip wheel --quiet --no-deps --wheel-dir .whl \
    "hydra-core==1.3.*" "omegaconf==2.3.*" "antlr4-python3-runtime==4.9.3" filelock
for wheel in .whl/*.whl; do
    case "$wheel" in
        *-py3-none-any.whl | *-py2.py3-none-any.whl) ;;
        *) echo "$wheel is not pure Python: it may not install on the GPU machine" >&2; exit 1 ;;
    esac
done

mkdir -p .data/MNIST/raw
cp "$SHARED"/MNIST/raw/*.gz .data/MNIST/raw/
"$PYTHON" - "$SHARED/omniglot-py" .data/omniglot-py <<'EOF'
import sys
import zipfile
from pathlib import Path

source, target = Path(sys.argv[1]), Path(sys.argv[2])
target.mkdir(parents=True, exist_ok=True)
for split in ("images_background", "images_evaluation"):
    pngs = sorted((source / split).glob("*/*/*.png"))
    if not pngs:
        sys.exit(f"no Omniglot PNGs under {source / split}")
    path = target / f"{split}.zip"
    partial = path.with_suffix(".zip.partial")
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_STORED) as archive:  # PNGs: compressed already
        for png in pngs:
            archive.write(png, png.relative_to(source).as_posix())
    partial.replace(path)
    print(f"{path}: {len(pngs)} images")
EOF
du -sh .whl .data
ls .whl
