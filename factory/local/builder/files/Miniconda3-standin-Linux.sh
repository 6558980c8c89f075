#!/bin/sh
# A stand-in for the Miniconda installer, served by factory's local cloud only
# (factory/local/builder/mirror.py): the real installer's download site cannot be reached there.
#
# It behaves like the real one where the miniconda_awscli role and the bake check rely on it:
#   sh Miniconda3-standin-Linux.sh -b [-f] [-u] [-p PREFIX]
# installs a prefix with PREFIX/bin/python, a real (ELF) interpreter copied from this
# machine's Python, with its standard library in PREFIX/lib/pythonX.Y and packages in
# PREFIX/lib/pythonX.Y/site-packages, as Miniconda lays them out. Like Miniconda's, it
# does not carry the C library or the dynamic loader: glibc comes from the host (in a
# container, from the host's library directories mounted into it). Unlike Miniconda,
# which bundles OpenSSL, libffi, zlib and the like in PREFIX/lib, the stand-in takes
# those from the host as well. PREFIX/bin/conda is a stand-in too:
# `conda install [-c CHANNEL] [-y] awscli[=VERSION|==VERSION]` installs that release of
# the real AWS CLI from PyPI into the prefix, with PREFIX/bin/aws a Python script whose
# shebang is PREFIX/bin/python (as conda writes it), so `PREFIX/bin/aws --version` runs
# without any shell; `conda clean` empties PREFIX/pkgs.
#
# Like real conda, which unpacks prebuilt packages from its package cache rather than
# building them, the stand-in conda unpacks a prebuilt site-packages tree when this
# machine's package cache ($FACTORY_STANDIN_CONDA_PKGS, default
# /var/cache/factory-local/conda-pkgs; factory/local/builder/conda_pkgs.py fills it) holds
# one for exactly this install: the key (`sh Miniconda3-standin-Linux.sh -k awscli==X`)
# covers the requested release, the interpreter (its version, path and bytes), pip's
# version and this stand-in's format. Without one it runs pip as before; with
# FACTORY_STANDIN_CONDA_PUBLISH=1 it then packs what pip installed into the cache (a
# temporary file linked into place: atomic, never overwriting an entry).
set -eu

# The package cache key of a pip requirement ($1) for the interpreter running it.
pkg_key_py='import hashlib, os, sys
import pip
exe = os.path.realpath(sys.executable)
h = hashlib.sha256()
for part in ("factory-standin-conda/1", sys.argv[1], sys.version, exe, pip.__version__):
    h.update(part.encode() + b"\0")
with open(exe, "rb") as f:
    h.update(f.read())
print(h.hexdigest()[:40])'
pkgs_default=/var/cache/factory-local/conda-pkgs

usage() {
    echo "usage: $0 -b [-f] [-u] [-p PREFIX]   (a stand-in for the Miniconda installer)" >&2
    echo "       $0 -k REQUIREMENT             (the stand-in's package cache key, e.g. awscli==1.32.27)" >&2
    exit 2
}

batch=0
force=0
prefix="${HOME:-/root}/miniconda3"
key_of=""
while getopts "bfhup:k:" opt; do
    case "$opt" in
        b) batch=1 ;;
        k) key_of="$OPTARG" ;;
        f | u) force=1 ;;
        p) prefix="$OPTARG" ;;
        *) usage ;;
    esac
done
py=/usr/bin/python3
[ -x "$py" ] || py="$(command -v python3)" || { echo "ERROR: the stand-in needs python3" >&2; exit 1; }
if [ -n "$key_of" ]; then
    exec "$py" -c "$pkg_key_py" "$key_of"
fi
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

"$py" -m pip --version >/dev/null 2>&1 || { echo "ERROR: the stand-in needs pip for $py (apt-get install python3-pip)" >&2; exit 1; }
exe="$(readlink -f "$py")"
stdlib="$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')"
pyver="$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"

echo "PREFIX=$prefix"
echo "Unpacking payload ..."
mkdir -p "$prefix/bin" "$prefix/pkgs" "$prefix/conda-meta"
cp "$exe" "$prefix/bin/python$pyver"
mkdir -p "$prefix/lib/python$pyver"
# Copied with symbolic links followed (-h): nothing in the prefix may point outside it, or
# it would not resolve in a container (and a write through a link would land on the host;
# Debian's sitecustomize.py is such a link into /etc, so it is left out).
tar -C "$stdlib" -h --exclude=./test --exclude=./site-packages --exclude=./dist-packages \
    --exclude=./sitecustomize.py --exclude='./config-*' -cf - . \
    | tar -C "$prefix/lib/python$pyver" -xf -

# The interpreter itself, with no wrapper script: a container without a shell must be able
# to run it (the bake check's image has nothing but what is mounted into it). Python finds
# its prefix from where the binary lives (PREFIX/lib/pythonX.Y/os.py).
ln -sf "python$pyver" "$prefix/bin/python"
ln -sf "python$pyver" "$prefix/bin/python3"
mkdir -p "$prefix/lib/python$pyver/site-packages"
# Miniconda's Python reads PREFIX/lib/pythonX.Y/site-packages; a Debian-built interpreter
# looks for dist-packages instead, so name the directory explicitly.
rm -f "$prefix/lib/python$pyver/sitecustomize.py"
cat > "$prefix/lib/python$pyver/sitecustomize.py" <<SITE
import site
import sys

site.addsitedir(sys.prefix + "/lib/python$pyver/site-packages")
SITE

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
spec=""
for pkg in \$pkgs; do
    case "\$pkg" in
        awscli) spec="awscli" ;;
        awscli=* | awscli==*)
            version="\${pkg#awscli=}"
            version="\${version#=}"
            case "\$version" in
                "" | *[!0-9A-Za-z.]*) echo "stand-in conda: not a version: \$pkg" >&2; exit 1 ;;
            esac
            spec="awscli==\$version" ;;
        *) echo "stand-in conda: only awscli can be installed, not \$pkg" >&2; exit 1 ;;
    esac
done
[ -n "\$spec" ] || { echo "stand-in conda: nothing to install" >&2; exit 2; }
site="\$prefix/lib/python$pyver/site-packages"
pkgs_dir="\${FACTORY_STANDIN_CONDA_PKGS:-$pkgs_default}"
key="\$('$py' -c '$pkg_key_py' "\$spec")"
if [ -f "\$pkgs_dir/\$key.tar" ]; then
    # Unpacked as pip --target --upgrade leaves it: each top-level entry replaced whole.
    for top in \$(tar -tf "\$pkgs_dir/\$key.tar" | sed -n 's|^\\./\\([^/][^/]*\\).*|\\1|p' | sort -u); do
        rm -rf "\$site/\$top"
    done
    tar -C "\$site" -xf "\$pkgs_dir/\$key.tar"
    echo "\$spec unpacked from the package cache (\$key)"
else
    '$py' -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-warn-script-location --upgrade \\
        --target "\$site" --cache-dir "\$prefix/pkgs/pip-cache" "\$spec"
    if [ "\${FACTORY_STANDIN_CONDA_PUBLISH:-}" = 1 ]; then
        mkdir -p "\$pkgs_dir"
        tmp="\$pkgs_dir/.\$key.\$\$.tar"
        tar -C "\$site" -cf "\$tmp" .
        ln "\$tmp" "\$pkgs_dir/\$key.tar" 2>/dev/null || true
        rm -f "\$tmp"
    fi
fi
# The entry point as conda writes it: a Python script run by the prefix's own python.
cat > "\$prefix/bin/aws" <<AWS
#!\$prefix/bin/python
import sys

from awscli.clidriver import main

if __name__ == "__main__":
    sys.exit(main())
AWS
chmod 0755 "\$prefix/bin/aws"
echo "\$spec installed into \$prefix"
CONDA
chmod 0755 "$prefix/bin/python$pyver" "$prefix/bin/conda"
echo "factory local stand-in for Miniconda, python $pyver" > "$prefix/conda-meta/history"
echo "installation finished."
