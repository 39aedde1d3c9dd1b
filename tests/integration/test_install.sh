#!/usr/bin/env bash
# Installs the build into a temporary prefix and builds a program against the installed
# header, library and pkg-config file, as a municipality's developer would.
#   test_install.sh BUILD_DIR
set -euo pipefail
build=$1
prefix=$(mktemp -d /tmp/amtsbote-install-XXXXXX)
trap 'rm -rf "$prefix"' EXIT
cmake --install "$build" --prefix "$prefix" >/dev/null
libdir=$(dirname "$(find "$prefix" -name amtsbote.pc | head -n 1)")/..
export PKG_CONFIG_PATH=$libdir/pkgconfig
cat >"$prefix/hello.c" <<'C'
#include <amtsbote.h>
#include <stdio.h>
#include <string.h>
int main(void)
{
    ab_client_t *c = ab_client_new();
    if (!c)
        return 1;
    int rc = ab_client_set_participant(c, "Not An Address");
    printf("%s: %s\n", ab_err_name(rc), ab_client_last_error(c));
    ab_client_destroy(&c);
    return rc == AB_EINVAL && c == NULL ? 0 : 1;
}
C
# shared, through pkg-config
cc -o "$prefix/hello" "$prefix/hello.c" $(pkg-config --cflags --libs amtsbote)
LD_LIBRARY_PATH=$libdir "$prefix/hello" | grep -q "INVALID_ARGUMENT: participant address"
# static libamtsbote (Debian's libzmq.pc cannot link libzmq itself statically)
cc -o "$prefix/hello-static" "$prefix/hello.c" $(pkg-config --cflags amtsbote) \
  "$libdir/libamtsbote.a" -lzmq -luv -lprotobuf-c -lssl -lcrypto -lpthread
"$prefix/hello-static" | grep -q "INVALID_ARGUMENT"
echo "1 passed, 0 failed"
