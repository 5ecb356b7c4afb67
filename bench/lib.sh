# Functions the bench scripts share; they source this file.

# cpu_ticks PID: utime+stime of PID and all its descendants, in clock ticks.
cpu_ticks() {
	local pid=$1 total=0 t
	for t in $(awk '{print $14+$15}' "/proc/$pid/stat" 2>/dev/null); do total=$((total + t)); done
	for c in $(cat /proc/"$pid"/task/*/children 2>/dev/null); do total=$((total + $(cpu_ticks "$c"))); done
	echo "$total"
}

# children_ms VAR: sets VAR to the user+system CPU, in milliseconds, of
# every child this shell has waited for (bash's times; a command
# substitution's children count once it has ended). The difference across
# one command is that command's. It sets a variable rather than printing:
# times in a command substitution would report the subshell's children.
children_ms() {
	local f="${TMPDIR:-/tmp}/herd-times.$$"
	times >"$f"
	printf -v "$1" '%s' "$(awk 'NR == 2 {
		split($1, u, /[ms]/); split($2, s, /[ms]/)
		printf "%d", (u[1] * 60 + u[2] + s[1] * 60 + s[2]) * 1000
	}' "$f")"
	rm -f "$f"
}

# idle_ticks: clock ticks every CPU of the machine has spent idle (idle and
# iowait of /proc/stat), since boot.
idle_ticks() { awk '/^cpu / {print $5 + $6}' /proc/stat; }

# tcp_segments: TCP segments the machine has sent since boot (OutSegs of
# /proc/net/snmp); over loopback, every segment of both ends.
tcp_segments() { awk '/^Tcp:/ && n++ {print $12}' /proc/net/snmp; }

# conn_split PORT: how the established connections to local PORT are spread
# over processes, the busiest first, as "9/7"; one number when one process
# holds them all (ss -p: the first process named for each socket).
conn_split() {
	ss -tnpH state established "( sport = :$1 )" | sed -n 's/.*users:(("[^"]*",pid=\([0-9]*\).*/\1/p' |
		sort | uniq -c | sort -rn | awk '{printf "%s%s", (NR > 1 ? "/" : ""), $1} END {if (NR == 0) printf "0"}'
}

# median: the median of the numbers on standard input, separated by spaces.
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

# spread: the lowest and highest of the numbers on standard input, as
# "low-high" rounded to whole numbers.
spread() { tr ' ' '\n' | grep -v '^$' | sort -g | awk 'NR == 1 {lo = $1} {hi = $1} END {printf "%.0f-%.0f", lo, hi}'; }

# ratio A B: A/B with two decimals.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a/b}'; }

# proc_switches PID: voluntary + involuntary context switches of every
# thread of PID.
proc_switches() { cat /proc/"$1"/task/*/status 2>/dev/null | awk '/^(non)?voluntary_ctxt_switches/ {s += $2} END {print s + 0}'; }

# ctx_switches PID: proc_switches of PID and all its descendants.
ctx_switches() {
	local pid=$1 total
	total=$(proc_switches "$pid")
	for c in $(cat /proc/"$pid"/task/*/children 2>/dev/null); do total=$((total + $(ctx_switches "$c"))); done
	echo "$total"
}

# await_http URL: waits up to 10 s for URL to answer; fails if it does not.
await_http() {
	for _ in $(seq 100); do curl -sf -o /dev/null "$1" && return 0; sleep 0.1; done
	curl -sf -o /dev/null "$1"
}

# install_missing COMMAND[=PACKAGES]...: installs from Debian the packages
# of every COMMAND not on the PATH (PACKAGES defaults to COMMAND; several
# are separated by commas).
install_missing() {
	local need=() c pkgs
	for c in "$@"; do
		if ! command -v "${c%%=*}" >/dev/null; then
			IFS=, read -r -a pkgs <<<"${c#*=}"
			need+=("${pkgs[@]}")
		fi
	done
	if [ ${#need[@]} -gt 0 ]; then
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
	fi
}
