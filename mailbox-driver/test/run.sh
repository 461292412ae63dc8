#!/usr/bin/env bash
# Test the kernel mailbox driver in a VM: build rdmasock.ko against Debian's 6.1
# kernel headers, build the C test (raw user API) and the Rust test of the kmod fabric
# (transport/tests/kmod.rs), pack them with busybox into an initramfs, boot Debian's
# 6.1 kernel on it in qemu (TCG, no network), and run insmod, the tests, rmmod and a
# kernel log check there (test/init). It also builds the shim (librdmasock.so, the
# `rdmasock` command), pingpong and the conformance programs stream and killpeer, and
# the VM runs the shim's tests on the kmod fabric (RDMASOCK_TRANSPORT=kmod: bulk
# transfer, prefork, forkconn, a client killed mid-transfer; "KMOD-SHIM-TESTS: ...",
# also counted in the total) and a 16 B ping-pong p50 over TCP, shm and kmod
# ("KMOD-BENCH: ...", printed at the end, not a criterion). The VM prints
# "KMOD-TESTS: N passed, M failed".
#
# The VM also runs the conformance matrix on the kmod fabric (the four shim/plain
# combinations and the semantics table of conformance/tests/, each shimmed run compared
# with kernel TCP as on the host; "KMOD-MATRIX: ...", also counted in the total).
#
# Exit status: 0 only if that line came with M = 0 and N > 0 and the KMOD-SHIM-TESTS
# and KMOD-MATRIX lines are there; non-zero on any failure, a crash, or the 900 s
# timeout. Installs what it needs (as root, Debian 12):
# qemu-system-x86, busybox-static, cpio, build-essential, and the newest
# linux-image/linux-headers 6.1 pair unless a matching pair is installed already.
#
# Environment: KMOD_KVER=6.1.0-N-amd64 picks a kernel; KMOD_TEST_OUT (default
# target/kmod-test) is the build folder; the serial console log is $out/console.log.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
drv=$(dirname "$here")
root=$(dirname "$drv")
out=${KMOD_TEST_OUT:-$root/target/kmod-test}
start=$(date +%s)
log() { echo "kmod-test: $*" >&2; }

# --- packages -------------------------------------------------------------------
apt_updated=0
apt_install() {
    if [ "$(id -u)" -ne 0 ]; then
        log "missing packages: $* (run as root to install them)"
        exit 1
    fi
    if [ $apt_updated = 0 ]; then
        apt-get update -qq
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
missing=()
for p in qemu-system-x86 busybox-static cpio build-essential; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
((${#missing[@]} == 0)) || apt_install "${missing[@]}"

# A kernel image with matching headers: the one named, else the newest installed.
pick_kver() {
    local v
    if [ -n "${KMOD_KVER:-}" ]; then
        echo "$KMOD_KVER"
        return
    fi
    # the generic flavour only (not -cloud-/-rt-), newest ABI first
    for v in $(ls /boot/ 2>/dev/null | sed -n 's/^vmlinuz-\(6\.1\.0-[0-9]*-amd64\)$/\1/p' | sort -t- -k2,2n -r); do
        if [ -e "/lib/modules/$v/build/Makefile" ]; then
            echo "$v"
            return
        fi
    done
}
kver=$(pick_kver)
if [ -z "$kver" ]; then
    # The metapackages pull the newest 6.1 image and headers, of one version.
    apt_install linux-image-amd64 linux-headers-amd64
    kver=$(pick_kver)
fi
if [ -n "${KMOD_KVER:-}" ] && [ ! -e "/boot/vmlinuz-$kver" ]; then
    apt_install "linux-image-$kver" "linux-headers-$kver"
fi
vmlinuz=/boot/vmlinuz-$kver
[ -r "$vmlinuz" ] && [ -e "/lib/modules/$kver/build/Makefile" ] || {
    log "no kernel image + headers for $kver"
    exit 1
}
log "kernel $kver"

rm -rf "$out/module" "$out/initramfs"
mkdir -p "$out/module" "$out/initramfs"

# --- the module (built in a copy: kbuild writes next to its sources) -------------
cp -r "$drv/Kbuild" "$drv/Makefile" "$drv/rdmasock.c" "$drv/include" "$out/module/"
make -s -C "/lib/modules/$kver/build" M="$out/module" W=1 modules 2>&1 | tee "$out/module/build.log" >&2
if grep -q -E "warning:|error:" "$out/module/build.log"; then
    log "the module build printed warnings or errors"
    exit 1
fi
ko=$out/module/rdmasock.ko
modinfo "$ko" | grep -q "vermagic: *$kver " || {
    log "vermagic of $ko does not match $kver"
    exit 1
}

# --- the tests --------------------------------------------------------------------
gcc -static -O2 -Wall -Wextra -Werror -o "$out/kmod_test" "$here/kmod_test.c"
gcc -static -O2 -Wall -Wextra -Werror -o "$out/asuser" "$here/asuser.c"

export CARGO_TARGET_DIR=$out/cargo
rust_bin=$(cd "$root" && cargo test -p rdmasock-transport --test kmod --no-run \
    --message-format=json 2>"$out/cargo.log" |
    sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n 1) || true
if [ -z "$rust_bin" ] || [ ! -x "$rust_bin" ]; then
    cat "$out/cargo.log" >&2
    log "building the Rust test failed"
    exit 1
fi
# The Rust binding against the C header: every ioctl number, size and offset.
gcc -Wall -Wextra -Werror -o "$out/abi_dump" "$here/abi_dump.c"
"$out/abi_dump" >"$out/abi.txt"
RDMASOCK_ABI_DUMP=$out/abi.txt "$rust_bin" --exact abi_matches_the_c_header >"$out/abi-test.log" 2>&1 || {
    cat "$out/abi-test.log" >&2
    log "the Rust binding does not match include/uapi/rdmasock.h"
    exit 1
}

# The shim (librdmasock.so + the `rdmasock` command), the ping-pong benchmark and the
# conformance C programs, for the shim's tests on the kmod fabric in the VM.
(cd "$root" && cargo build --release -p rdmasock --lib --bin rdmasock &&
    cargo build --release -p rdmasock-bench --bin pingpong) >"$out/cargo-shim.log" 2>&1 || {
    cat "$out/cargo-shim.log" >&2
    log "building the shim or pingpong failed"
    exit 1
}
for prog in stream killpeer threadsock; do
    cc -O2 -D_FORTIFY_SOURCE=2 -Wall -Werror -pthread -o "$out/$prog" "$root/conformance/c/$prog.c"
done
shim_bins=("$CARGO_TARGET_DIR/release/librdmasock.so" "$CARGO_TARGET_DIR/release/rdmasock"
    "$CARGO_TARGET_DIR/release/pingpong" "$out/stream" "$out/killpeer" "$out/threadsock")

# The conformance matrix (the four shim/plain combinations and the semantics table,
# conformance/tests/), built here and run in the VM on the kmod fabric
# (RDMASOCK_CONFORMANCE_FABRIC=kmod, with the programs the harness copies in).
matrix=(shim_shim shimclient_plainserver plainclient_shimserver plain_plain semantics)
(cd "$root" && cargo test --release -p rdmasock-conformance $(printf -- '--test %s ' "${matrix[@]}") --no-run \
    --message-format=json 2>"$out/cargo-conf.log") >"$out/conf.json" || {
    cat "$out/cargo-conf.log" >&2
    log "building the conformance matrix failed"
    exit 1
}
conf_bins=()
for t in "${matrix[@]}"; do
    exe=$(/usr/bin/python3 -c '
import json, sys
for l in open(sys.argv[1]):
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == sys.argv[2] and "test" in m["target"]["kind"] and m.get("executable"):
        print(m["executable"])' "$out/conf.json" "$t" | tail -n 1)
    [ -x "$exe" ] || {
        log "no test binary for conformance/tests/$t.rs"
        exit 1
    }
    conf_bins+=("$exe")
done

# --- the initramfs ----------------------------------------------------------------
ir=$out/initramfs
mkdir -p "$ir"/{bin,dev,proc,sys,tmp,etc}
cp /bin/busybox "$ir/bin/busybox"
cp "$here/init" "$ir/init"
chmod 755 "$ir/init"
cp "$ko" "$ir/rdmasock.ko"
# sock_diag for TCP (the shim's accept asks it who the peer is): modules in Debian's kernel
for m in inet_diag tcp_diag; do
    f=$(ls "/lib/modules/$kver/kernel/net/ipv4/$m.ko"* 2>/dev/null | head -n 1)
    case "$f" in
    *.ko) cp "$f" "$ir/$m.ko" ;;
    *.ko.xz) xz -dc "$f" >"$ir/$m.ko" ;;
    *.ko.zst) zstd -qdc "$f" >"$ir/$m.ko" ;;
    *)
        log "no $m module for $kver"
        exit 1
        ;;
    esac
done
cp "$out/kmod_test" "$ir/kmod_test"
cp "$out/asuser" "$ir/bin/asuser"
cp "$rust_bin" "$ir/kmod-rust"
mkdir -p "$ir/conf/bin"
for i in "${!matrix[@]}"; do
    strip -o "$ir/conf/${matrix[$i]}" "${conf_bins[$i]}"
done
for b in rstream semantics; do
    strip -o "$ir/conf/bin/$b" "$CARGO_TARGET_DIR/release/$b"
done
mkdir -p "$ir/shim"
for b in "${shim_bins[@]}"; do
    strip -o "$ir/shim/$(basename "$b")" "$b"
done
# the binaries' shared libraries and the dynamic loader, at the same paths
for lib in $(ldd "$rust_bin" "${shim_bins[@]}" "${conf_bins[@]}" | grep -o '/[^ ]*' | grep -v ':$' | sort -u); do
    mkdir -p "$ir$(dirname "$lib")"
    cp -L "$lib" "$ir$lib"
done
printf 'root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$ir/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$ir/etc/group"
(cd "$ir" && find . -print0 | cpio --null -o -H newc --quiet | gzip -1) >"$out/initramfs.cpio.gz"

# --- boot -------------------------------------------------------------------------
log "booting $vmlinuz (qemu TCG, 2 vCPUs, 1 GiB, no network)"
set +e
timeout 900 qemu-system-x86_64 -accel tcg -smp 2 -m 1G -nographic -no-reboot \
    -nic none -kernel "$vmlinuz" -initrd "$out/initramfs.cpio.gz" \
    -append "console=ttyS0 panic=-1 quiet loglevel=4" </dev/null 2>&1 |
    tr -d '\r' | tee "$out/console.log"
qrc=${PIPESTATUS[0]}
set -e

summary=$(grep -a "^KMOD-TESTS: [0-9]* passed, [0-9]* failed" "$out/console.log" | tail -n 1 || true)
shim_summary=$(grep -a "^KMOD-SHIM-TESTS: [0-9]* passed, [0-9]* failed" "$out/console.log" | tail -n 1 || true)
matrix_summary=$(grep -a "^KMOD-MATRIX: [0-9]* passed, [0-9]* failed" "$out/console.log" | tail -n 1 || true)
bench=$(grep -a "^KMOD-BENCH: " "$out/console.log" | tail -n 1 || true)
elapsed=$(($(date +%s) - start))
if [ "$qrc" = 124 ]; then
    log "timed out after 900 s (${elapsed} s in all)"
    exit 1
fi
if [ -z "$summary" ]; then
    log "the VM printed no KMOD-TESTS line (qemu exit $qrc); see $out/console.log"
    exit 1
fi
passed=$(echo "$summary" | sed 's/.*: \([0-9]*\) passed.*/\1/')
failed=$(echo "$summary" | sed 's/.* \([0-9]*\) failed.*/\1/')
log "${shim_summary:-no KMOD-SHIM-TESTS line}"
log "${matrix_summary:-no KMOD-MATRIX line}"
log "${bench:-no KMOD-BENCH line}"
log "$summary (${elapsed} s)"
# the shim's tests are counted in KMOD-TESTS too; their own line must be there
[ "$failed" = 0 ] && [ "$passed" -gt 0 ] && [ -n "$shim_summary" ] && [ -n "$matrix_summary" ]
