#!/bin/sh
# A stand-in for the Miniconda installer, served by factory's local cloud only
# (factory/local/mirror.py): the real installer's download site cannot be reached there.
#
# It behaves like the real one where the miniconda_awscli role relies on it:
#   sh Miniconda3-standin-Linux.sh -b [-f] [-u] [-p PREFIX]
# installs a self-contained prefix: PREFIX/bin/python (this machine's Python with its
# standard library and shared libraries, glibc and its loader included, so the prefix
# runs inside any container the way Miniconda's does) and PREFIX/bin/conda, whose
# `conda install [-c CHANNEL] [-y] awscli` installs the real AWS CLI from PyPI into the
# prefix, so `PREFIX/bin/aws --version` works; `conda clean` empties PREFIX/pkgs.
set -eu

usage() {
    echo "usage: $0 -b [-f] [-u] [-p PREFIX]   (a stand-in for the Miniconda installer)" >&2
    exit 2
}

batch=0
force=0
prefix="${HOME:-/root}/miniconda3"
while getopts "bfhup:" opt; do
    case "$opt" in
        b) batch=1 ;;
        f | u) force=1 ;;
        p) prefix="$OPTARG" ;;
        *) usage ;;
    esac
done
[ "$batch" = 1 ] || { echo "ERROR: this stand-in installs only in batch mode (-b)" >&2; exit 2; }
case "$prefix" in
    /*) ;;
    *) echo "ERROR: the prefix must be an absolute path: $prefix" >&2; exit 2 ;;
esac
if [ -e "$prefix" ] && [ "$force" = 0 ]; then
    echo "ERROR: File or directory already exists: '$prefix'" >&2
    echo "If you want to update an existing installation, use the -u option." >&2
    exit 1
fi

py=/usr/bin/python3
[ -x "$py" ] || py="$(command -v python3)" || { echo "ERROR: the stand-in needs python3" >&2; exit 1; }
"$py" -m pip --version >/dev/null 2>&1 || { echo "ERROR: the stand-in needs pip for $py (apt-get install python3-pip)" >&2; exit 1; }
exe="$(readlink -f "$py")"
stdlib="$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')"
pyver="$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"

echo "PREFIX=$prefix"
echo "Unpacking payload ..."
mkdir -p "$prefix/bin" "$prefix/lib/runtime" "$prefix/lib/site-packages" "$prefix/pkgs" "$prefix/conda-meta"
cp "$exe" "$prefix/bin/python$pyver.real"
mkdir -p "$prefix/lib/python$pyver"
tar -C "$stdlib" --exclude=./test --exclude=./site-packages --exclude=./dist-packages -cf - . \
    | tar -C "$prefix/lib/python$pyver" -xf -

# The shared libraries the interpreter and its extension modules need, and the loader.
ldd "$exe" "$stdlib"/lib-dynload/*.so 2>/dev/null \
    | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\/.*ld-linux/ { print $1 }' \
    | sort -u > "$prefix/pkgs/runtime-libs.txt"
while read -r lib; do
    case "$lib" in
        *ld-linux*) cp -L "$lib" "$prefix/lib/runtime/ld.so" ;;
        *) cp -L "$lib" "$prefix/lib/runtime/" ;;
    esac
done < "$prefix/pkgs/runtime-libs.txt"
[ -f "$prefix/lib/runtime/ld.so" ] || { echo "ERROR: cannot find the dynamic loader of $exe" >&2; exit 1; }

cat > "$prefix/bin/python" <<PY
#!/bin/sh
# The prefix's own Python (Miniconda stand-in): its own libraries, no system Python needed.
PYTHONHOME='$prefix'
PYTHONPATH='$prefix/lib/site-packages'
PYTHONNOUSERSITE=1
PYTHONDONTWRITEBYTECODE=1
export PYTHONHOME PYTHONPATH PYTHONNOUSERSITE PYTHONDONTWRITEBYTECODE
exec '$prefix/lib/runtime/ld.so' --library-path '$prefix/lib/runtime' '$prefix/bin/python$pyver.real' "\$@"
PY
ln -sf python "$prefix/bin/python3"

cat > "$prefix/bin/conda" <<CONDA
#!/bin/sh
# conda, as far as the Miniconda stand-in goes: install awscli, clean, --version.
set -eu
prefix='$prefix'
case "\${1:-}" in
    --version | -V) echo "conda 0.0.0 (factory local stand-in)"; exit 0 ;;
    clean) rm -rf "\$prefix/pkgs"; mkdir -p "\$prefix/pkgs"; exit 0 ;;
    install) shift ;;
    *) echo "stand-in conda: only 'install awscli', 'clean' and '--version' are supported" >&2; exit 2 ;;
esac
pkgs=""
while [ \$# -gt 0 ]; do
    case "\$1" in
        -c | --channel) shift 2 ;;
        -y | --yes | -q | --quiet) shift ;;
        -*) echo "stand-in conda: unknown option \$1" >&2; exit 2 ;;
        *) pkgs="\$pkgs \$1"; shift ;;
    esac
done
for pkg in \$pkgs; do
    case "\$pkg" in
        awscli | awscli=* | awscli==*) ;;
        *) echo "stand-in conda: only awscli can be installed, not \$pkg" >&2; exit 1 ;;
    esac
done
[ -n "\$pkgs" ] || { echo "stand-in conda: nothing to install" >&2; exit 2; }
'$py' -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-warn-script-location --upgrade \\
    --target "\$prefix/lib/site-packages" --cache-dir "\$prefix/pkgs/pip-cache" awscli
cat > "\$prefix/bin/aws" <<AWS
#!/bin/sh
exec '\$prefix/bin/python' -m awscli "\\\$@"
AWS
chmod 0755 "\$prefix/bin/aws"
echo "awscli installed into \$prefix"
CONDA
chmod 0755 "$prefix/bin/python" "$prefix/bin/conda"
echo "factory local stand-in for Miniconda, python $pyver" > "$prefix/conda-meta/history"
echo "installation finished."
