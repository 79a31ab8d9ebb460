# expbuild supervisor: run the task's argv, then report what happened through the termination log.
#
# Invoked by a static busybox copied into the pod, so it needs nothing from the task's image:
#   busybox sh -c "<this script>" expbuild-supervisor BUSYBOX TERMLOG CGROUP_ROOT WORKSPACE ARGC ARGV... OUTPUT...
# It exits with ARGV's exit code (128+N after signal N) and writes one compact JSON object,
# under 4 KiB, to TERMLOG (parsed by expbuild_isolation.kube.results):
#   {"v":1,"exit":0,"cg":2,"cpu_us":1234,"mem":56789,"out":[[0,"<sha256>",1234,1],[1,null,0,0]],"trunc":0}
# out entries: [index into OUTPUT, hex sha256 or null when not a regular file, size, executable].
bb=$1 termlog=$2 cgroot=$3 workspace=$4 argc=$5
shift 5
set -f

# A name without a slash is looked up in PATH here: busybox would otherwise prefer its own applets.
prog=$1
case $prog in
  */*) ;;
  *) found=; saved_ifs=$IFS; IFS=:
     for dir in ${PATH:-/usr/local/bin:/usr/bin:/bin}; do
       if [ -f "$dir/$prog" ] && [ -x "$dir/$prog" ]; then found=$dir/$prog; break; fi
     done
     IFS=$saved_ifs; prog=$found ;;
esac

if [ -z "$prog" ]; then
  echo "expbuild: $1: command not found" >&2
  code=127
else
  cmd='"$prog"' j=2
  while [ "$j" -le "$argc" ]; do cmd="$cmd \"\${$j}\""; j=$((j + 1)); done
  eval "$cmd" '<&0 &'
  child=$!
  trap 'kill -TERM "$child" 2>/dev/null' TERM INT HUP
  wait "$child"; code=$?
  while kill -0 "$child" 2>/dev/null; do wait "$child"; code=$?; done
  trap - TERM INT HUP
fi
shift "$argc"

number() { case $1 in ''|*[!0-9]*) echo null ;; *) echo "$1" ;; esac; }
cg=0 cpukey=cpu_us cpu= mem=
if [ -f "$cgroot/cgroup.controllers" ]; then
  cg=2
  if [ -r "$cgroot/cpu.stat" ]; then
    while read -r key value; do [ "$key" = usage_usec ] && cpu=$value; done < "$cgroot/cpu.stat"
  fi
  [ -r "$cgroot/memory.peak" ] && read -r mem < "$cgroot/memory.peak"
  [ -z "$mem" ] && [ -r "$cgroot/memory.current" ] && read -r mem < "$cgroot/memory.current"
elif [ -d "$cgroot/memory" ]; then
  cg=1 cpukey=cpu_ns
  for acct in "$cgroot/cpuacct/cpuacct.usage" "$cgroot/cpu,cpuacct/cpuacct.usage" "$cgroot/cpuacct,cpu/cpuacct.usage"; do
    if [ -r "$acct" ]; then read -r cpu < "$acct"; break; fi
  done
  [ -r "$cgroot/memory/memory.max_usage_in_bytes" ] && read -r mem < "$cgroot/memory/memory.max_usage_in_bytes"
fi
head="{\"v\":1,\"exit\":$code,\"cg\":$cg,\"$cpukey\":$(number "$cpu"),\"mem\":$(number "$mem"),\"out\":["

outs= sep= index=0 trunc=0
for path in "$@"; do
  file=$workspace/$path entry="[$index,null,0,0]"
  if [ -f "$file" ]; then
    sum=$("$bb" sha256sum < "$file" 2>/dev/null); sum=${sum%% *}
    size=$("$bb" stat -L -c %s "$file" 2>/dev/null)
    exe=0; [ -x "$file" ] && exe=1
    case $sum in *[!0-9a-f]*|'') entry="[$index,null,0,0]" ;; *) entry="[$index,\"$sum\",$(number "$size"),$exe]" ;; esac
  fi
  candidate="$outs$sep$entry"
  if [ $(( ${#head} + ${#candidate} + 16 )) -gt 4000 ]; then trunc=1; break; fi
  outs=$candidate sep=, index=$((index + 1))
done

printf '%s%s],"trunc":%s}' "$head" "$outs" "$trunc" > "$termlog" 2>/dev/null
exit "$code"
