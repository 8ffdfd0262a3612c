#!/bin/sh
# Runs a recur-firmware ELF in QEMU mps2-an386 (Cortex-M4F) with semihosting; the
# arguments after the ELF become the program's semihosting command line (argv[1..]).
# Always under a timeout (RECUR_QEMU_TIMEOUT seconds, default 60): QEMU can hang when its
# output pipe closes. Extra QEMU options (e.g. -plugin) come from RECUR_QEMU_EXTRA.
set -eu
elf="$1"
shift
args="arg=$(basename "$elf")"
for a in "$@"; do
  case "$a" in
    *,* | *" "*) echo "qemu-run.sh: argument '$a' contains a comma or a space, which the semihosting command line cannot carry" >&2; exit 2 ;;
  esac
  args="$args,arg=$a"
done
# shellcheck disable=SC2086
exec timeout --kill-after=5 "${RECUR_QEMU_TIMEOUT:-60}" qemu-system-arm -M mps2-an386 -cpu cortex-m4 \
  -display none -monitor none -serial none \
  -semihosting-config "enable=on,target=native,$args" \
  ${RECUR_QEMU_EXTRA:-} -kernel "$elf"
