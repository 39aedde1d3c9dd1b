#!/usr/bin/env bash
# Integration test of the development PKI (certs/pki.sh) with the openssl command: the good
# certificates verify for their purpose with CRL checking of the whole chain, every certificate
# of 'bad' fails (or carries exactly the fault its name says), and usage errors are refused.
#   test_pki.sh PKI_SH
set -uo pipefail
PKI=${1:?usage: test_pki.sh PKI_SH}
work=$(mktemp -d /tmp/amtsbote-pki-XXXXXX)
trap 'rm -rf "$work"' EXIT
passed=0
failed=0
ok() { passed=$((passed + 1)); echo "ok - $1"; }
bad() { failed=$((failed + 1)); echo "not ok - $1"; }
d=$work/pki
U=urn:amtsbote:participant:

# step NAME CMD...: a pki.sh command that must succeed.
step() {
  local name=$1
  shift
  if "$@" >"$work/out" 2>&1; then ok "$name"; else
    bad "$name: exit $?: $(head -c 600 "$work/out")"
  fi
}
# verify PURPOSE CERT: openssl verify against the chain with CRL checking of the whole chain.
verify() {
  openssl verify -CAfile "$d/ca/chain.pem" -crl_check_all -CRLfile "$d/ca/crl.pem" \
    -purpose "$1" "$2" >"$work/verify" 2>&1
}
# verify_ok NAME PURPOSE CERT / verify_fails NAME PURPOSE CERT WANT (a phrase of the error)
verify_ok() {
  if verify "$2" "$3"; then ok "$1"; else bad "$1: $(tr '\n' ' ' <"$work/verify")"; fi
}
verify_fails() {
  if verify "$2" "$3"; then
    bad "$1: verified, must fail"
  elif grep -qF -- "$4" "$work/verify"; then
    ok "$1"
  else
    bad "$1: failed, but not with '$4': $(tr '\n' ' ' <"$work/verify")"
  fi
}
# san CERT: the subjectAltName entries, one a line.
san() {
  openssl x509 -in "$1" -noout -ext subjectAltName 2>/dev/null | tail -n +2 | tr ',' '\n' |
    sed 's/^ *//; /^$/d'
}
# san_is NAME CERT WANT...: the SAN entries are exactly WANT (in order).
san_is() {
  local name=$1 cert=$2 got want
  shift 2
  got=$(san "$cert")
  want=$(printf '%s\n' "$@")
  if [ "$got" = "$want" ]; then ok "$name"; else
    bad "$name: SAN is '$(echo "$got" | tr '\n' ' ')', want '$*'"
  fi
}
# eku_is NAME CERT WANT
eku_is() {
  local got
  got=$(openssl x509 -in "$2" -noout -ext extendedKeyUsage 2>/dev/null | tail -n +2 | sed 's/^ *//')
  if [ "$got" = "$3" ]; then ok "$1"; else bad "$1: extendedKeyUsage '$got', want '$3'"; fi
}
# fails NAME WANT_CODE NEEDLE CMD...: a pki.sh command that must fail with that code and say NEEDLE.
fails() {
  local name=$1 want=$2 needle=$3 rc=0
  shift 3
  "$@" >"$work/out" 2>&1 || rc=$?
  if [ "$rc" != "$want" ]; then
    bad "$name: exit $rc, want $want: $(head -c 400 "$work/out")"
  elif ! grep -qF -- "$needle" "$work/out"; then
    bad "$name: '$needle' not in: $(head -c 400 "$work/out")"
  else
    ok "$name"
  fi
}

command -v openssl >/dev/null || { echo "not ok - openssl is not installed"; echo "0 passed, 1 failed"; exit 1; }

# ---- make the PKI ----
step "init" bash "$PKI" init "$d"
step "broker" bash "$PKI" broker "$d" broker --dns localhost --dns broker.test --ip 127.0.0.1
step "issue bund.bmi" bash "$PKI" issue "$d" bund.bmi
step "issue kommune.09162000.meldeamt" bash "$PKI" issue "$d" kommune.09162000.meldeamt
step "issue land.by.stmi (to be revoked)" bash "$PKI" issue "$d" land.by.stmi
step "bad" bash "$PKI" bad "$d"
step "revoke land.by.stmi" bash "$PKI" revoke "$d" land.by.stmi
step "crl" bash "$PKI" crl "$d"

# ---- layout and modes ----
missing=""
for f in ca/root.crt ca/issuing.crt ca/chain.pem ca/crl.pem ca/root.key ca/issuing.key \
  ca/root/index.txt ca/issuing/index.txt ca/issuing/serial ca/issuing/crlnumber \
  broker.crt broker.key bund.bmi.crt bund.bmi.key kommune.09162000.meldeamt.crt \
  kommune.09162000.meldeamt.key; do
  [ -s "$d/$f" ] || missing="$missing $f"
done
for n in expired not-yet-valid other-ca revoked serverauth-only no-san-uri two-san-uris \
  malformed-address wildcard; do
  [ -s "$d/bad/$n.crt" ] && [ -s "$d/bad/$n.key" ] || missing="$missing bad/$n.{crt,key}"
done
if [ -z "$missing" ]; then ok "every file is there"; else bad "missing:$missing"; fi
modes=$(find "$d" -name '*.key' ! -perm 600 | sed "s|$d/||" | tr '\n' ' ')
if [ -z "$modes" ]; then ok "every key is mode 0600"; else bad "keys not 0600: $modes"; fi
if [ "$(grep -c 'BEGIN CERTIFICATE' "$d/ca/chain.pem")" = 2 ] &&
  [ "$(grep -c 'BEGIN X509 CRL' "$d/ca/crl.pem")" = 2 ]; then
  ok "chain.pem holds two certificates and crl.pem two CRLs"
else
  bad "chain.pem or crl.pem does not hold two entries"
fi

# ---- the CAs ----
ext() { openssl x509 -in "$1" -noout -ext "$2" 2>/dev/null | tr -s ' \n' ' '; }
root_bc=$(ext "$d/ca/root.crt" basicConstraints)
root_ku=$(ext "$d/ca/root.crt" keyUsage)
iss_bc=$(ext "$d/ca/issuing.crt" basicConstraints)
if [[ $root_bc == *"critical CA:TRUE "* && $root_ku == *"Certificate Sign, CRL Sign"* ]] &&
  [ "$(openssl x509 -in "$d/ca/root.crt" -noout -subject | sed 's/^subject=//')" = \
    "$(openssl x509 -in "$d/ca/root.crt" -noout -issuer | sed 's/^issuer=//')" ]; then
  ok "root CA is self-signed, CA:TRUE critical, keyCertSign+cRLSign"
else
  bad "root CA extensions: $root_bc / $root_ku"
fi
if [[ $iss_bc == *"critical CA:TRUE, pathlen:0"* ]] &&
  openssl verify -CAfile "$d/ca/root.crt" "$d/ca/issuing.crt" >/dev/null 2>&1; then
  ok "issuing CA is signed by the root, pathlen:0"
else
  bad "issuing CA: $iss_bc"
fi
if openssl pkey -in "$d/bund.bmi.key" -noout -text 2>/dev/null | grep -q 'prime256v1'; then
  ok "keys are EC prime256v1 by default"
else
  bad "bund.bmi.key is not an EC prime256v1 key"
fi

# ---- good certificates ----
verify_ok "bund.bmi verifies as sslclient with CRL checks" sslclient "$d/bund.bmi.crt"
verify_ok "kommune.09162000.meldeamt verifies as sslclient with CRL checks" sslclient \
  "$d/kommune.09162000.meldeamt.crt"
verify_ok "broker verifies as sslserver with CRL checks" sslserver "$d/broker.crt"
verify_fails "broker certificate is not a client certificate" sslclient "$d/broker.crt" \
  "unsuitable certificate purpose"
verify_fails "bund.bmi is not a server certificate" sslserver "$d/bund.bmi.crt" \
  "unsuitable certificate purpose"
san_is "bund.bmi carries exactly one SAN URI with its address" "$d/bund.bmi.crt" "URI:${U}bund.bmi"
san_is "kommune.09162000.meldeamt carries its address" "$d/kommune.09162000.meldeamt.crt" \
  "URI:${U}kommune.09162000.meldeamt"
eku_is "bund.bmi has EKU clientAuth only" "$d/bund.bmi.crt" "TLS Web Client Authentication"
eku_is "broker has EKU serverAuth only" "$d/broker.crt" "TLS Web Server Authentication"
san_is "broker SANs are the --dns and --ip given" "$d/broker.crt" DNS:localhost DNS:broker.test \
  "IP Address:127.0.0.1"
ku=$(ext "$d/bund.bmi.crt" keyUsage)
if [[ $ku == *"critical Digital Signature "* ]]; then ok "bund.bmi keyUsage is digitalSignature"; else
  bad "bund.bmi keyUsage: $ku"
fi
# a verifier that checks the whole chain needs the root CRL too: with the issuing CRL alone it fails
openssl crl -in "$d/ca/crl.pem" -out "$work/first.crl" 2>/dev/null
if openssl verify -CAfile "$d/ca/chain.pem" -crl_check_all -CRLfile "$work/first.crl" \
  -purpose sslclient "$d/bund.bmi.crt" >"$work/verify" 2>&1; then
  bad "crl.pem's root CRL is not needed?"
elif grep -qF "unable to get certificate CRL" "$work/verify"; then
  ok "crl.pem's second CRL is the root's (needed by -crl_check_all)"
else
  bad "with only the first CRL: $(tr '\n' ' ' <"$work/verify")"
fi

# ---- revocation ----
verify_fails "revoked land.by.stmi fails with CRL check" sslclient "$d/land.by.stmi.crt" \
  "certificate revoked"
if openssl verify -CAfile "$d/ca/chain.pem" -purpose sslclient "$d/land.by.stmi.crt" >/dev/null 2>&1; then
  ok "land.by.stmi verifies without CRL (so the CRL is what refuses it)"
else
  bad "land.by.stmi fails even without the CRL"
fi

# ---- the certificates that must fail ----
b=$d/bad
verify_fails "bad/expired fails" sslclient "$b/expired.crt" "certificate has expired"
verify_fails "bad/not-yet-valid fails" sslclient "$b/not-yet-valid.crt" "certificate is not yet valid"
verify_fails "bad/other-ca fails" sslclient "$b/other-ca.crt" "unable to get local issuer certificate"
verify_fails "bad/revoked fails with CRL check" sslclient "$b/revoked.crt" "certificate revoked"
verify_fails "bad/serverauth-only fails -purpose sslclient" sslclient "$b/serverauth-only.crt" \
  "unsuitable certificate purpose"
eku_is "bad/serverauth-only has EKU serverAuth only" "$b/serverauth-only.crt" \
  "TLS Web Server Authentication"
san_is "bad/no-san-uri has only a DNS SAN" "$b/no-san-uri.crt" "DNS:no-san-uri.test"
san_is "bad/two-san-uris has two SAN URIs" "$b/two-san-uris.crt" "URI:${U}test.first" \
  "URI:${U}test.second"
san_is "bad/malformed-address has URI ...:Bad..Name" "$b/malformed-address.crt" "URI:${U}Bad..Name"
san_is "bad/wildcard has URI ...:kommune.*" "$b/wildcard.crt" "URI:${U}kommune.*"
# these four are otherwise sound: the chain, purpose and CRL accept them, only the address is wrong
for n in no-san-uri two-san-uris malformed-address wildcard; do
  verify_ok "bad/$n is otherwise a valid client certificate" sslclient "$b/$n.crt"
done
# the key in each bad pair belongs to its certificate
mismatch=""
for c in "$b"/*.crt; do
  k=${c%.crt}.key
  [ "$(openssl x509 -in "$c" -noout -pubkey 2>/dev/null)" = "$(openssl pkey -in "$k" -pubout 2>/dev/null)" ] ||
    mismatch="$mismatch ${c##*/}"
done
if [ -z "$mismatch" ]; then ok "each bad certificate matches its key"; else bad "key mismatch:$mismatch"; fi

# ---- errors ----
fails "issue with a bad address is a usage error naming it" 2 "'Bad..Name'" \
  bash "$PKI" issue "$d" Bad..Name
if [ ! -e "$d/Bad..Name.crt" ]; then ok "nothing issued for the bad address"; else
  bad "Bad..Name.crt was written"
fi
fails "issue with a one-segment address is refused" 2 "'bund'" bash "$PKI" issue "$d" bund
fails "issue with nine segments is refused" 2 "'a.b.c.d.e.f.g.h.i'" bash "$PKI" issue "$d" a.b.c.d.e.f.g.h.i
fails "issue with a segment starting with '-' is refused" 2 "'bund.-bmi'" bash "$PKI" issue "$d" bund.-bmi
fails "init twice without --force refuses, naming DIR/ca" 1 "$d/ca exists" bash "$PKI" init "$d"
if verify sslclient "$d/bund.bmi.crt"; then ok "the refused init left the CA alone"; else
  bad "the CA changed after a refused init"
fi
fails "issue over an existing certificate refuses" 1 "$d/bund.bmi.crt exists" \
  bash "$PKI" issue "$d" bund.bmi
fails "issue without init names the missing file" 1 "$work/none/ca/" \
  bash "$PKI" issue "$work/none" bund.bmi
fails "unknown command is a usage error" 2 "'frob'" bash "$PKI" frob "$d"
fails "unknown option is a usage error" 2 "'--bogus'" bash "$PKI" init "$work/x" --bogus
fails "unknown curve is a usage error" 2 "'secp384r1'" bash "$PKI" init "$work/x" --curve secp384r1
fails "missing argument is a usage error" 2 "DIR PARTICIPANT" bash "$PKI" issue "$d"
fails "revoking what was never issued fails naming it" 1 "'land.nw.im'" bash "$PKI" revoke "$d" land.nw.im
if bash "$PKI" --help 2>&1 | grep -q 'Examples:'; then ok "--help explains with examples"; else
  bad "--help has no examples"
fi

# ---- brainpool ----
step "init --curve brainpoolP256r1" bash "$PKI" init "$work/bp" --curve brainpoolP256r1
step "issue on brainpool" bash "$PKI" issue "$work/bp" bund.bmi
if openssl pkey -in "$work/bp/bund.bmi.key" -noout -text 2>/dev/null | grep -q brainpoolP256r1 &&
  openssl verify -CAfile "$work/bp/ca/chain.pem" -crl_check_all -CRLfile "$work/bp/ca/crl.pem" \
    -purpose sslclient "$work/bp/bund.bmi.crt" >/dev/null 2>&1; then
  ok "brainpoolP256r1 certificate verifies"
else
  bad "brainpoolP256r1 certificate does not verify or has another curve"
fi
step "init --force replaces the CA" bash "$PKI" init "$work/bp" --force

echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
