SUMMARY = "Full-duplex voice appliance: Kyutai Mimi and Moshi on the device"
DESCRIPTION = "moshid runs Kyutai's Mimi codec and Moshi speech-text model on a \
               Jetson-class board with a microphone and a speaker, is driven over MQTT by a \
               home hub and runs as a hardened systemd service. The weights (CC-BY 4.0) are \
               downloaded on first start into the cache directory, not packaged."
HOMEPAGE = "https://github.com/moshid/moshid"
BUGTRACKER = "https://github.com/moshid/moshid/issues"
SECTION = "multimedia"
CVE_PRODUCT = "moshid"
LICENSE = "MIT | Apache-2.0"
# The workspace's `license = "MIT OR Apache-2.0"` line.
LIC_FILES_CHKSUM = "file://Cargo.toml;beginline=9;endline=9;md5=86b31c7756a1a7962f28b62856ed4f05"

# alsa-sys finds libasound through pkg-config.
DEPENDS += "alsa-lib libopus"

SRC_URI = "git://github.com/moshid/moshid.git;protocol=https;branch=main"
# Bump together with moshid-crates.inc (yocto/update-crates.py writes it from Cargo.lock).
SRCREV = "5beff8f30f5e43664e252b58791c16aeb8c2af59"

S = "${WORKDIR}/git"

require ${BPN}-crates.inc

# cuda: candle's CUDA backend through meta-tegra's cuda class (nvcc, cudart, cublas,
# curand, nvrtc; libcuda from the L4T driver at run time). Default on machines whose
# MACHINEOVERRIDES include "cuda" (meta-tegra's Jetson machines).
PACKAGECONFIG ??= "${@'cuda' if 'cuda' in (d.getVar('MACHINEOVERRIDES') or '').split(':') else ''}"
PACKAGECONFIG[cuda] = ",,cuda-libraries cuda-compiler-native cuda-cudart-native,tegra-libraries-cuda"

inherit cargo cargo-update-recipe-crates pkgconfig systemd useradd
# Deferred so that a bbappend or local.conf can still change PACKAGECONFIG.
inherit_defer ${@bb.utils.contains('PACKAGECONFIG', 'cuda', 'cuda', '', d)}

# The workspace root is a virtual manifest; build the daemon crate (the `moshid` binary).
CARGO_SRC_DIR = "daemon"
CARGO_BUILD_FLAGS += "${@bb.utils.contains('PACKAGECONFIG', 'cuda', '--features cuda', '', d)}"

# candle compiles its kernels for one compute capability and cannot ask nvidia-smi on a
# Jetson: take the first of meta-tegra's CUDA_ARCHITECTURES (87 Orin, 72 Xavier).
MOSHID_CUDA_COMPUTE_CAP ?= "${@(d.getVar('CUDA_ARCHITECTURES') or '87').split(';')[0].split('-')[0]}"
MOSHID_CUDA_LIBDIR = "${STAGING_DIR_HOST}/usr/local/cuda-${CUDA_VERSION}/${baselib}"
# cudarc links libcuda at build time: the toolkit's stub, the driver's library at run time.
RUSTFLAGS:append = "${@bb.utils.contains('PACKAGECONFIG', 'cuda', ' -L native=${MOSHID_CUDA_LIBDIR} -L native=${MOSHID_CUDA_LIBDIR}/stubs', '', d)}"

do_compile:prepend() {
    if ${@bb.utils.contains('PACKAGECONFIG', 'cuda', 'true', 'false', d)}; then
        export CUDA_COMPUTE_CAP="${MOSHID_CUDA_COMPUTE_CAP}"
        export CUDA_ROOT="${CUDA_PATH}"
        export NVCC_CCBIN="${CUDAHOSTCXX}"
    fi
}

do_install:append() {
    install -d ${D}${systemd_system_unitdir}
    install -m 0644 ${S}/systemd/moshid.service ${D}${systemd_system_unitdir}/moshid.service
    install -d ${D}${nonarch_libdir}/sysusers.d ${D}${nonarch_libdir}/tmpfiles.d
    install -m 0644 ${S}/systemd/moshid.sysusers ${D}${nonarch_libdir}/sysusers.d/moshid.conf
    install -m 0644 ${S}/systemd/moshid.tmpfile ${D}${nonarch_libdir}/tmpfiles.d/moshid.conf
    # The configuration holds the MQTT password: root-owned, readable by the service group.
    install -d -m 0750 -o root -g moshid ${D}${sysconfdir}/moshid
    install -m 0640 -o root -g moshid ${S}/systemd/moshid.toml.example ${D}${sysconfdir}/moshid/config.toml
    install -d ${D}${docdir}/${BPN}
    install -m 0644 ${S}/systemd/moshid.toml.example ${D}${docdir}/${BPN}/config.toml.example
}

# Created at build time too, so that read-only root filesystems have the user.
USERADD_PACKAGES = "${PN}"
GROUPADD_PARAM:${PN} = "--system render"
USERADD_PARAM:${PN} = "--system --home-dir ${localstatedir}/lib/moshid --no-create-home \
                       --shell /sbin/nologin --user-group --groups audio,video,render moshid"

SYSTEMD_SERVICE:${PN} = "moshid.service"
SYSTEMD_AUTO_ENABLE:${PN} = "enable"

CONFFILES:${PN} = "${sysconfdir}/moshid/config.toml"
FILES:${PN} += "${nonarch_libdir}/sysusers.d/moshid.conf ${nonarch_libdir}/tmpfiles.d/moshid.conf"

# MQTT over TLS verifies the broker against the system's CA store.
RRECOMMENDS:${PN} += "ca-certificates"

# A target daemon only: no native or SDK variant makes sense.
BBCLASSEXTEND = ""
