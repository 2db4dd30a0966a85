#!/usr/bin/env bash
# Offline data that ships as a Debian package: Fashion-MNIST (see ../shared/DATA.md).
# Installed system-wide when we are root; otherwise unpacked into .data/ beside the project.
set -euo pipefail
want=/usr/share/datasets/fashion-mnist
[ -f "$want/t10k-images-idx3-ubyte.gz" ] && exit 0
[ -f ".data$want/t10k-images-idx3-ubyte.gz" ] && exit 0
if [ "$(id -u)" = 0 ]; then
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null && exit 0
fi
mkdir -p .data/deb && (cd .data/deb && apt-get download dataset-fashion-mnist) && dpkg -x .data/deb/*.deb .data
