# expbuild prepare: the init container of every task pod.
#
#   busybox sh -c "<this script>" expbuild-prepare BUSYBOX TOOLS WORKSPACE WORKDIR [file SRC DST MODE | dir SRC DST]...
# Copies the static BUSYBOX into TOOLS/bin for the supervisor, places the inputs (projected
# ConfigMap files) into WORKSPACE, and creates the working directory.
set -eu
bb=$1 tools=$2 workspace=$3 workdir=$4
shift 4
"$bb" mkdir -p "$tools/bin"
"$bb" cp "$bb" "$tools/bin/busybox"
while [ $# -gt 0 ]; do
  case $1 in
    file)
      target=$workspace/$3
      "$bb" mkdir -p "$("$bb" dirname "$target")"
      "$bb" cp -L "$2" "$target"
      "$bb" chmod "$4" "$target"
      shift 4 ;;
    dir)
      target=$workspace/$3
      "$bb" mkdir -p "$target"
      for source in "$2"/*; do
        [ -e "$source" ] && "$bb" cp -L "$source" "$target/"
      done
      "$bb" chmod -R u+w "$target"
      shift 3 ;;
    *) echo "expbuild-prepare: unknown input kind $1" >&2; exit 2 ;;
  esac
done
[ -z "$workdir" ] || "$bb" mkdir -p "$workspace/$workdir"
