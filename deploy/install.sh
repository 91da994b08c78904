#!/usr/bin/env bash
# The container image's install steps, in one place: the Dockerfile runs them and CI runs them too
# (tests/deploy/test_image.py), so the recipe is exercised on every test run, not only on image builds.
#
#   deploy/install.sh system          OS packages the image needs (Python 3 + venv) when the base image
#                                     lacks them, e.g. nvidia/cuda bases; apt-get, as root
#   deploy/install.sh app PREFIX      a virtual environment at PREFIX with torch, then flowmap with its
#                                     extras from this checkout, then `check`
#   deploy/install.sh check PREFIX    smoke test of an installed PREFIX: imports, shipped models, the CLI
#
# Settings (environment; the Dockerfile passes its build arguments through):
#   TORCH_SPEC       torch requirement installed first          (default torch==2.13.0)
#   TORCH_INDEX_URL  index to take torch from                   (default: pip's configured index;
#                    the Dockerfile uses https://download.pytorch.org/whl/cpu or .../cu128, so a bare
#                    torch requirement never pulls a CUDA build into the CPU image)
#   TORCH_CUDA       yes: torch must be a CUDA build; no: must not be (default: no check)
#   EXTRAS           flowmap extras                             (default serve,export)
#   PYTHON           interpreter the venv is made from           (default python3)
#   REUSE_SITE       CI only: a site-packages dir whose packages count as installed (a .pth file), so
#                    CI runs every step without unpacking torch again (tests/deploy/test_image.py)
set -euo pipefail

SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
TORCH_INDEX_URL="${TORCH_INDEX_URL:-}"
TORCH_CUDA="${TORCH_CUDA:-}"
EXTRAS="${EXTRAS:-serve,export}"
PYTHON="${PYTHON:-python3}"
REUSE_SITE="${REUSE_SITE:-}"

say() { echo "install.sh: $*" >&2; }
die() { say "error: $*"; exit 2; }

system() {
    if command -v python3 >/dev/null && python3 -c "import venv, ensurepip" 2>/dev/null; then
        say "python3 with venv present: nothing to install"
        return
    fi
    command -v apt-get >/dev/null || die "python3 (with venv) is missing and apt-get is not available"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends python3 python3-venv ca-certificates >/dev/null
    rm -rf /var/lib/apt/lists/*
}

app() {
    local prefix
    prefix="$(realpath -m "$1")"
    "$PYTHON" -m venv "$prefix"
    if [ -n "$REUSE_SITE" ]; then
        [ -d "$REUSE_SITE" ] || die "REUSE_SITE=$REUSE_SITE is not a directory"
        "$prefix/bin/python" -c "import site; print(site.getsitepackages()[0])" | {
            read -r site_dir && echo "$REUSE_SITE" >"$site_dir/zz-reuse-site.pth"
        }
    fi
    local pip=("$prefix/bin/python" -m pip install --no-cache-dir --quiet)
    "${pip[@]}" --upgrade pip
    say "installing $TORCH_SPEC${TORCH_INDEX_URL:+ from $TORCH_INDEX_URL}"
    "${pip[@]}" "$TORCH_SPEC" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
    # pin the torch just installed, so resolving flowmap's own requirements can never swap it
    local pins="$prefix/torch-constraint.txt"
    "$prefix/bin/python" -c "import torch; print('torch==' + torch.__version__)" >"$pins"
    say "installing flowmap[$EXTRAS] from $SRC (constraint: $(cat "$pins"))"
    PIP_CONSTRAINT="$pins" "${pip[@]}" "${SRC}[${EXTRAS}]"
    rm -f "$pins"
    check "$prefix"
}

check() {
    local prefix
    prefix="$(realpath -m "$1")"
    [ -x "$prefix/bin/flowmap" ] || die "$prefix/bin/flowmap missing: run '$0 app $prefix' first"
    # from / so that a checkout in the working directory cannot stand in for the installed package
    (cd / && PREFIX="$prefix" TORCH_CUDA="$TORCH_CUDA" OMP_NUM_THREADS=1 "$prefix/bin/python" - <<'PY'
import os, sys
import torch
import flowmap
from flowmap.checkpoint import load_model

prefix = os.path.realpath(os.environ["PREFIX"])
if not os.path.realpath(flowmap.__file__).startswith(prefix + os.sep):
    sys.exit(f"install.sh: error: flowmap imported from {flowmap.__file__}, not from {prefix}")

cuda = torch.version.cuda
want = os.environ.get("TORCH_CUDA", "")
if want == "no" and cuda:
    sys.exit(f"install.sh: error: a CUDA build of torch ({torch.__version__}) in a CPU install")
if want == "yes" and not cuda:
    sys.exit(f"install.sh: error: torch {torch.__version__} is a CPU build; TORCH_CUDA=yes wants CUDA")
for name in ("mnist", "digits", "gmm8"):
    load_model(name)  # the shipped models are inside the package
import server.supervisor, server.api_process.process, server.core_process.process  # noqa: E401,F401  (the serve extra)
print(f"install.sh: ok: torch {torch.__version__} (cuda {cuda}), python {sys.version.split()[0]}", file=sys.stderr)
PY
    )
    "$prefix/bin/flowmap" serve --help >/dev/null
}

case "${1:-}" in
    system) system ;;
    app) [ $# -eq 2 ] || die "usage: $0 app PREFIX"; app "$2" ;;
    check) [ $# -eq 2 ] || die "usage: $0 check PREFIX"; check "$2" ;;
    *) die "usage: $0 {system | app PREFIX | check PREFIX}" ;;
esac
